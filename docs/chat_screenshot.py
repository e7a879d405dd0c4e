"""Regenerate docs/chat.png: the chat app with the embedded SmolLM2-135M-Instruct, one greedy reply, in Debian's
chromium (headless). Run from the repository root: `python docs/chat_screenshot.py` (no sign-in, loopback only)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.data.store import open_store  # noqa: E402
from align.ui.chat import GenerationSettings, build_app, launch, resolve_chat_model  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.ui.label_support import chromium  # noqa: E402

PROMPT = "Give me three tips for staying cool in a heatwave, as a numbered list with the key words in bold."


def main(out: str = "docs/chat.png") -> None:
    model = resolve_chat_model("embedded:smollm2-135m-instruct").load()
    store = open_store(Path(tempfile.mkdtemp()) / "labels.sqlite")
    app = build_app(model, store=store, user="docs", settings=GenerationSettings(temperature=0.0, max_new_tokens=160))
    url = launch(app, host="127.0.0.1", port=free_port(), login=None)
    try:
        with chromium() as browser:
            page = browser.new_context(viewport={"width": 1100, "height": 980}).new_page()
            page.goto(url)
            page.wait_for_selector("#message textarea", timeout=30_000)
            page.fill("#message textarea", PROMPT)
            page.click("#send")
            page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=300_000)
            page.screenshot(path=out, full_page=True)
            print(page.locator("#chat-a [data-testid='bot']").last.inner_text())
    finally:
        app.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The chat app in Debian's chromium: a message gets a reply that visibly streams in, markup in the conversation
stays text, and a thumbs up (or, in compare mode, "A is better") lands in the label store."""

from __future__ import annotations

import re

import pytest

from align.data.store import open_store
from tests.ui.chat_support import make_stage, running_chat
from tests.ui.label_support import chromium, make_store, password_of

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

MARKUP = '<img src=x onerror="window.__pwned=1"><b>bold</b><script>window.__pwned=2</script>'

# Records every distinct text #reply-a shows, so the test can tell a streamed reply from one that appears at once.
WATCH_REPLY_JS = """() => {
  window.__replyStates = [];
  const target = document.querySelector('#reply-a');
  new MutationObserver(() => {
    const text = (target.querySelector('.align-text') || {innerText: ''}).innerText.trim();
    const seen = window.__replyStates;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(target, {subtree: true, childList: true, characterData: true});
}"""


def letters(text: str) -> str:
    """Word characters only: the page drops the control characters a random model emits."""
    return re.sub(r"\W", "", text)


def open_chat(browser, url, name=None):
    """The chat page; signed in on the login page first as `name` (a `make_store` account) if given."""
    page = browser.new_context(viewport={"width": 1200, "height": 1100}).new_page()
    page.goto(url)
    if name:
        page.get_by_label("username").fill(name)
        page.get_by_label("password").fill(password_of(name))
        page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#message textarea", timeout=30_000)
    return page


def send(page, message: str) -> None:
    page.fill("#message textarea", message)
    page.click("#send")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=120_000)


def test_a_streamed_reply_appears_and_thumbs_up_is_stored(tmp_path, tiny_model_dir):
    store = make_store(tmp_path / "labels.sqlite")
    with running_chat(str(tiny_model_dir), store) as url, chromium() as browser:
        page = open_chat(browser, url, "ada")  # the page signs in with the store's accounts
        assert "no gate run" in page.inner_text("#model-info")
        page.evaluate(WATCH_REPLY_JS)
        send(page, MARKUP)

        states = page.evaluate("window.__replyStates")
        assert len(states) > 1, f"the reply should grow in several steps, saw {states}"
        assert all(letters(states[-1]).startswith(letters(s)) for s in states[:-1]), states  # it grew
        shown = page.inner_text("#reply-a").strip()
        assert shown
        assert page.evaluate("window.__pwned") is None  # neither the img handler nor the script ran
        assert "<b>bold</b>" in page.inner_text("#conversation")  # the markup is shown as text
        assert page.locator("#conversation b").count() == 0

        page.click("#thumbs-up")
        page.wait_for_function("document.querySelector('#status').innerText.includes('Saved')", timeout=30_000)

    [row] = store.feedback()
    assert row["rating"] == "up" and (row["user"], row["auth"]) == ("ada", "login") and row["rejected"] is None
    assert row["conversation"] == [{"role": "user", "content": MARKUP}]
    assert letters(row["reply"]) == letters(shown)


def test_picking_a_model_to_compare_shows_two_replies_and_stores_the_choice(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    sft = make_stage(runs, "demo", "sft", tiny_model_dir)
    store = open_store(tmp_path / "labels.sqlite")
    with running_chat(str(tiny_model_dir), store, runs_dir=runs, no_auth=True) as url, chromium() as browser:
        page = open_chat(browser, url)
        assert page.locator("#thumbs-up").is_visible() and not page.locator("#reply-b").is_visible()
        page.click("text=System prompt and generation settings")
        page.click("#compare-with input")
        page.get_by_role("option", name=str(sft)).click()
        page.wait_for_function("document.querySelector('#model-info').innerText.includes('Model B')",
                               timeout=60_000)
        assert "promoted · gate pass (2 checks passed)" in page.inner_text("#model-info")
        assert page.locator("#reply-b").is_visible() and not page.locator("#thumbs-up").is_visible()
        send(page, "tell me something")
        reply_a, reply_b = page.inner_text("#reply-a").strip(), page.inner_text("#reply-b").strip()
        assert reply_a and reply_b
        page.click("#choose-a")
        page.wait_for_function("document.querySelector('#status').innerText.includes('A is better')",
                               timeout=30_000)

    [pair] = store.export_preferences()
    assert pair["prompt"] == [{"role": "user", "content": "tell me something"}]
    assert letters(pair["chosen"][0]["content"]) == letters(reply_a)
    assert letters(pair["rejected"][0]["content"]) == letters(reply_b)
    assert store.feedback()[0]["model"] == f"{tiny_model_dir} > {sft}"

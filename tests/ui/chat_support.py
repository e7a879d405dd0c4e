"""Shared pieces of the chat-app tests: run folders with manifests around the tiny model, a live chat app.

The server and browser plumbing (free ports, Debian's chromium) comes from `tests.ui.label_support`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from tests.ui.label_support import free_port
from align.ui.access import GuardedLogin
from align.ui.chat import ChatModel, ToxicityFilter, build_app, launch, resolve_chat_model

PASSED_GATE = {"verdict": "pass", "override": None, "error": None,
               "checks": [{"name": "toxicity.expected_max", "value": 0.1, "passed": True},
                          {"name": "bbq.ambiguous_bias", "value": 0.0, "passed": True}]}
FAILED_GATE = {"verdict": "fail", "override": None, "error": None,
               "checks": [{"name": "toxicity.expected_max", "value": 0.9, "passed": False},
                          {"name": "bbq.ambiguous_bias", "value": 0.0, "passed": True},
                          {"name": "bold.sentiment_gap", "value": 0.4, "passed": False}]}


def make_stage(runs_dir: Path, run: str, stage: str, model_dir: Path, *, status: str = "promoted",
               gate: dict | None = PASSED_GATE, finished_at: str = "2025-01-01T10:00:00") -> Path:
    """runs/<run>/<stage>: a copy of `model_dir` with a manifest.json in the run-folder schema."""
    folder = Path(runs_dir) / run / stage
    shutil.copytree(model_dir, folder)
    manifest = {"stage": stage, "run": run, "status": status, "model": {"source": "tiny", "format": "full"},
                "gate": gate, "finished_at": finished_at}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@contextlib.contextmanager
def running_chat(model: str | ChatModel, store, *, compare: str | ChatModel | None = None, runs_dir: Path | str = "runs",
                 compare_choices=(), filter_threshold: float | None = None, scorer: str | None = None,
                 no_auth: bool = False, user: str = "tester", tls=None, loaded_models: int = 2, seed: int | None = None):
    """The real chat app served on a free loopback port; yields its URL. It signs people in with the
    store's accounts, unless `no_auth` (then feedback is credited to `user`)."""
    chat_model = model if isinstance(model, ChatModel) else resolve_chat_model(model, runs_dir)
    second = compare if isinstance(compare, ChatModel) or compare is None else resolve_chat_model(compare, runs_dir)
    reply_filter = ToxicityFilter(filter_threshold, scorer) if filter_threshold is not None else None
    app = build_app(chat_model, store=store, compare=second, runs_dir=runs_dir, compare_choices=compare_choices,
                    reply_filter=reply_filter, user=user if no_auth else None, loaded_models=loaded_models,
                    seed=seed)
    url = launch(app, host="127.0.0.1", port=free_port(), login=None if no_auth else GuardedLogin(store.check_password),
                 tls=tls)
    try:
        yield url.rstrip("/")
    finally:
        app.close()


class ScriptedModel(ChatModel):
    """The tiny model's tokenizer and transformers' real `TextIteratorStreamer`, but the reply is `script` (or the
    next of a list of scripts):
    its tokens are fed to the streamer one at a time (`delay_s` apart), as `generate` would. For tests that need
    a reply with given markdown or markup in it, which a random tiny model does not write."""

    def __init__(self, model_dir, script: str | list[str], *, name: str | None = None, delay_s: float = 0.05):
        super().__init__(name=name or str(model_dir), source=str(model_dir))
        self.scripts = [script] if isinstance(script, str) else list(script)  # one per call, round and round
        self.script, self.delay_s, self.calls = self.scripts[0], delay_s, 0

    def generate(self, messages, settings, streamer) -> None:
        import time

        import torch

        self.load()
        script = self.scripts[self.calls % len(self.scripts)]
        self.calls += 1
        ids = self.tokenizer(script, add_special_tokens=False)["input_ids"]
        streamer.put(torch.tensor([[0]]))  # the prompt, which the streamer skips
        for token in ids:
            time.sleep(self.delay_s)
            streamer.put(torch.tensor([token]))
        streamer.end()

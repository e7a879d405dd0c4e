"""Normalisation: Unicode repair (ftfy), whitespace, empty and truncated turns, role order.

- `fix_unicode`: ftfy's fix_text (mojibake such as "donâ€™t", HTML entities, control characters);
- `whitespace`: each line's trailing spaces and runs of spaces or tabs collapsed, more than one blank line made one,
  the message stripped;
- a message left empty is an `empty_turn` (the row goes);
- `role_order`: after an optional system message, user and assistant alternate and a chat's first turn is the
  user's. Consecutive messages of one role are merged (`merge`) or the row goes (`drop`);
- `drop_truncated`: a trained reply (a chat's last assistant turn, a pair's chosen or rejected one) that stops
  mid-sentence — an unclosed code block, or a last character of , ; : ( [ { - or a lone letter after a space —
  is a `truncated_turn`;
- a pair whose chosen and rejected replies are the same after all this is an `identical_pair`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from align.config import opt
from align.data.curate import StepResult, map_contents
from align.data.curate.parallel import run_rows

STEP = "normalise"


@dataclass
class Options:
    enabled: bool = opt(True, "repair Unicode, whitespace, empty and truncated turns, role order")
    fix_unicode: bool = opt(True, "repair mojibake and HTML entities with ftfy")
    whitespace: bool = opt(True, "collapse runs of spaces and blank lines, strip each message")
    role_order: str = opt("merge", "consecutive messages of one role: merge them, or drop the row",
                          choices=("merge", "drop"))
    drop_truncated: bool = opt(True, "drop rows whose trained reply stops mid-sentence or inside a code block")


_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_CUT_ENDINGS = (",", ";", ":", "(", "[", "{", "-", "–")


def clean_text(text: str, fix_unicode: bool = True, whitespace: bool = True) -> str:
    if fix_unicode:
        import ftfy

        text = ftfy.fix_text(text)
    if whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u200b", "")
        lines = [_SPACES.sub(" ", line).rstrip() for line in text.split("\n")]
        text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    return text


def looks_truncated(text: str) -> bool:
    """A reply that stops mid-sentence: an unclosed ``` block, a dangling , ; : ( - ..., or one lone letter."""
    text = text.rstrip()
    if not text:
        return False
    if text.count("```") % 2 == 1:
        return True
    if text.endswith(_CUT_ENDINGS) and not text.endswith(("--", ":)", ":-)", ";)")):
        return True
    last = text.rsplit(None, 1)[-1]
    return len(text.split()) > 3 and len(last) == 1 and last.isalpha() and last not in "aAI"


def _order(messages: list[dict], merge: bool, chat: bool) -> tuple[list[dict] | None, str]:
    """Messages with alternating roles (merged where one role repeats), or None and why not."""
    ordered: list[dict] = []
    for message in messages:
        if ordered and ordered[-1]["role"] == message["role"]:
            if not merge:
                return None, f"two {message['role']} messages in a row"
            ordered[-1] = {**ordered[-1], "content": ordered[-1]["content"] + "\n\n" + message["content"]}
            continue
        ordered.append(dict(message))
    turns = [m for m in ordered if m["role"] != "system"]
    if chat and turns and turns[0]["role"] != "user":
        return None, "the conversation starts with the assistant"
    return ordered, ""


def normalise_row(row: dict, options: dict):
    """One row → (normalised row or None, reason, detail, changed)."""
    new = map_contents(row, lambda text: clean_text(text, options["fix_unicode"], options["whitespace"]))
    for key in ("messages", "prompt", "chosen", "rejected"):
        for i, message in enumerate(new.get(key, [])):
            if not message["content"]:
                return None, "empty_turn", f"{key}[{i}] is empty after normalisation", False
    merge = options["role_order"] == "merge"
    for key in ("messages", "prompt", "chosen", "rejected"):
        if key in new:
            ordered, why = _order(new[key], merge, chat=key in ("messages", "prompt"))
            if ordered is None:
                return None, "role_order", f"{key}: {why}", False
            new[key] = ordered
    replies = [("messages", new["messages"][-1]["content"])] if "messages" in new else \
        [(key, " ".join(m["content"] for m in new[key])) for key in ("chosen", "rejected")]
    if options["drop_truncated"]:
        for key, text in replies:
            if looks_truncated(text):
                return None, "truncated_turn", f"{key}: ends {text[-30:]!r}", False
    if "chosen" in new and replies[0][1] == replies[1][1]:
        return None, "identical_pair", "chosen and rejected are the same reply", False
    return new, "", "", new != row


def apply(records, options, env) -> StepResult:
    settings = {"fix_unicode": options.fix_unicode, "whitespace": options.whitespace,
                "role_order": options.role_order, "drop_truncated": options.drop_truncated}
    return run_rows(records, normalise_row, settings, STEP, num_proc=env.num_proc, progress=env.progress)

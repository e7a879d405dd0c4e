"""What the chat and labeling apps share: the page CSS, model text made inert, and the sign-in lookup.

Contract: model and user text never reaches a page as markup. `text_html` and `conversation_html`
render it as escaped text through jinja2 templates with autoescape on; `inert_markdown` keeps it
as markdown (bold, lists, code blocks render) but escapes ``&`` and ``<`` outside code, so no tag
or event handler in it survives to the browser; Gradio's own sanitiser is the second layer.
"""

from __future__ import annotations

import re

import gradio as gr
import jinja2

CSS = """
.align-turn { margin: 0 0 .6em 0; }
.align-role { font-weight: 600; text-transform: capitalize; margin-right: .4em; }
.align-text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: inherit; }
.align-reply { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: .6em .8em; }
.align-notice { font-style: italic; opacity: .75; }
.align-model { margin: .2em 0; }
.align-picked { outline: 3px solid var(--color-accent); border-radius: 10px; }
"""

_TEMPLATES = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_TEXT = _TEMPLATES.from_string('<div class="align-text">{{ text }}</div>')
_CONVERSATION = _TEMPLATES.from_string(
    '{% for m in messages %}{% if not loop.first %}\n{% endif %}<div class="align-turn">'
    '<span class="align-role">{{ m.role }}</span><div class="align-text">{{ m.content }}</div></div>{% endfor %}')
_NOTICE = _TEMPLATES.from_string('<div class="align-notice">{{ text }}</div>')


def text_html(text: str) -> str:
    """Untrusted text as inert HTML: escaped, whitespace kept."""
    return _TEXT.render(text=str(text))


def conversation_html(messages: list[dict]) -> str:
    """The conversation so far, every message escaped."""
    return _CONVERSATION.render(messages=[{"role": str(m["role"]), "content": str(m["content"])} for m in messages])


def notice_html(text: str) -> str:
    """A line from the app itself (not model text), escaped all the same."""
    return _NOTICE.render(text=text)


# a fence opens a code block that runs to its closing fence (or to the end of a reply still streaming)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)


def _escape_prose(text: str) -> str:
    """``&`` and ``<`` as entities outside inline code spans (markdown shows a span's text literally)."""
    out, last = [], 0
    for match in _INLINE_CODE.finditer(text):
        out.append(text[last:match.start()].replace("&", "&amp;").replace("<", "&lt;"))
        out.append(match.group(0))
        last = match.end()
    out.append(text[last:].replace("&", "&amp;").replace("<", "&lt;"))
    return "".join(out)


def inert_markdown(text: str) -> str:
    """Model text as markdown that renders (emphasis, lists, code blocks) but carries no HTML: outside
    code, ``&`` and ``<`` become entities, so ``<script>`` or ``<img onerror=…>`` shows as text;
    inside code blocks and spans the markdown renderer escapes them itself."""
    out: list[str] = []
    prose: list[str] = []
    fence: str | None = None
    for line in str(text).splitlines(keepends=True):
        opened = _FENCE.match(line)
        if fence is None and opened:
            out.append(_escape_prose("".join(prose)))
            prose, fence = [], opened.group(1)
            out.append(line)
        elif fence is not None:
            out.append(line)
            closing = _FENCE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence) \
                    and not line.strip()[len(closing.group(1)):].strip():
                fence = None
        else:
            prose.append(line)
    out.append(_escape_prose("".join(prose)))
    return "".join(out)


def signed_in_name(request: gr.Request | None) -> str | None:
    """The account a request signed in as (Gradio's login), or None."""
    return getattr(request, "username", None) or None


def require_name(request: gr.Request | None, message: str = "Not signed in.") -> str:
    """The signed-in account's name; a page error when there is none."""
    name = signed_in_name(request)
    if not name:
        raise gr.Error(message)
    return name

"""The chat app: talk to a trained model, compare two side by side, and feed the label store.

    python -m align.run chat                                   # the latest promoted ppo/dpo/sft under runs/
    python -m align.run chat --model runs/demo --compare runs/demo/sft

Which model: a run folder gives that run's promoted chat model (ppo, else dpo, else sft; status
promoted or overridden; a reward model is not a chat model); a stage folder, a model folder, a hub
id or ``embedded:smollm2-135m-instruct`` is used as given. Without ``--model``, the newest run with a
promoted chat model is used, else the embedded base model (with a notice). The page shows each
model's status and gate verdict from its manifest.json (the failed checks, if any).

Replies stream token by token (transformers' ``TextIteratorStreamer``, generation in a thread)
under the model's chat template, with the system prompt and generation settings on the page.
Compare mode (``--compare`` or the "Compare with" picker) generates both replies at once, side by
side. The picker offers only what the server started with (``--compare``, ``--compare-choice``, the
stages under ``--runs-dir``); a caller cannot make it load a path of their own.

Sign-in: whenever it is served, the app signs people in with the label store's accounts
(throttled, as in the labeling app: `ui.access`), and feedback is credited to the signed-in name
(``auth="login"``). ``--no-auth`` serves without sign-in on loopback hosts only; its rows carry
``--user`` and ``auth="none"``. Model text never reaches the page as markup: the Chatbots render it as markdown with ``&`` and ``<`` escaped
outside code (``ui.common.inert_markdown``; Gradio sanitises on top), the API returns it HTML-escaped.

Output filter (``--filter-toxicity T``): each finished reply is scored by the gates' toxicity scorer
(loaded only when the filter is on); one scoring above T is withheld with a notice and never joins
the conversation. While the filter is on, a reply's text appears only after it passed the check.

Feedback goes into the label store (``data.store.LabelStore.add_feedback``): thumbs up/down rate the
latest reply; in compare mode "A is better" / "B is better" store the chosen reply and the rejected
one, which `export_preferences()` (and so the ``labels:<store>`` dataset spec) returns as a
preference pair. For those rows `model` reads "<chosen model> > <rejected model>". The chosen reply
continues the conversation; without a choice, reply A does.

The same server answers API calls (``gradio_client``): ``/send(message, system_prompt, temperature,
top_p, max_new_tokens, compare_with)`` streams the page's updates; ``/thumbs_up``, ``/thumbs_down``,
``/choose_a``, ``/choose_b`` record feedback on the caller's latest reply; ``/clear`` starts over.
"""

from __future__ import annotations

import html
import queue
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import jinja2

from align.errors import AlignError, ModelError
from align.log import log
from align.runs import PROMOTABLE, finished_stages, gate_summary, read_manifest
from align.data.store import LabelStore, open_store
from align.ui import access
from align.ui.access import GuardedLogin, TLSFiles, is_loopback
from align.ui.common import CSS, conversation_html, inert_markdown, notice_html, signed_in_name, text_html

#: Stages whose model one can chat with, best first within a run. (An rm stage is a reward model.)
CHAT_STAGES = ("ppo", "grpo", "rloo", "dpo", "kto", "sft")
EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
_LOAD_LOCK = threading.Lock()  # from_pretrained patches torch globally while it loads: never two at once


# ----------------------------------------------------------------------------------------- models
def best_stage_of_run(run_dir: Path) -> Path | None:
    """The run's promoted chat model: the first of CHAT_STAGES it has (promoted or overridden)."""
    for stage in CHAT_STAGES:
        if (read_manifest(Path(run_dir) / stage) or {}).get("status") in PROMOTABLE:
            return Path(run_dir) / stage
    return None


def latest_chat_model(runs_dir: Path) -> Path | None:
    """The best promoted chat model of the run that finished one most recently, under `runs_dir`."""
    newest: dict[Path, str] = {}
    for stage in CHAT_STAGES:
        for folder in finished_stages(runs_dir, stage):
            manifest = read_manifest(folder) or {}
            if manifest.get("status") in PROMOTABLE:
                run = folder.parent
                newest[run] = max(newest.get(run, ""), manifest.get("finished_at", ""))
    if not newest:
        return None
    return best_stage_of_run(max(newest, key=lambda run: (newest[run], run.name)))


def chat_model_choices(runs_dir: Path) -> list[str]:
    """Every finished chat-model stage under `runs_dir` (newest first), for the compare picker."""
    found = [folder for stage in CHAT_STAGES for folder in finished_stages(runs_dir, stage)]
    found.sort(key=lambda folder: (read_manifest(folder) or {}).get("finished_at", ""), reverse=True)
    return [str(folder) for folder in found]


@dataclass
class ChatModel:
    """A model to chat with: where it came from, its manifest (if an align stage), and, once loaded, the
    model and tokenizer."""

    name: str  # what the page shows
    source: str  # what align.models loads
    manifest: dict | None = None
    run_dir: Path | None = None
    model: object = None
    tokenizer: object = None

    @property
    def verdict(self) -> str:
        return gate_summary(self.manifest)

    def load(self) -> "ChatModel":
        """Load the tokenizer and model once (thread-safe: transformers' loading is not, so one load at a time)."""
        with _LOAD_LOCK:
            if self.model is None:
                from align.models import load_causal_lm, load_tokenizer

                log.info(f"loading {self.name} ...")
                self.tokenizer = load_tokenizer(self.source)
                model = load_causal_lm(self.source)
                model.eval()
                self.model = model
        return self

    def generate(self, messages: list[dict], settings: "GenerationSettings", streamer) -> None:
        """Generate one reply to `messages` under the chat template, feeding `streamer`."""
        import torch

        from align.generate import chat_inputs

        self.load()
        inputs = chat_inputs(self.tokenizer, [messages], next(self.model.parameters()).device)
        kwargs = dict(max_new_tokens=int(settings.max_new_tokens), streamer=streamer, use_cache=True,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(settings.temperature), top_p=float(settings.top_p))
        else:  # greedy
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            self.model.generate(**inputs, **kwargs)


def resolve_chat_model(spec: str | None, runs_dir: str | Path = "runs") -> ChatModel:
    """What `--model` names (see the module docstring), not yet loaded."""
    runs_dir = Path(runs_dir)
    if spec is None:
        found = latest_chat_model(runs_dir)
        if found is None:
            log.info(f"no promoted ppo/dpo/sft model under {runs_dir}/: chatting with the base model {EMBEDDED_DEFAULT} "
                 f"(train one with `python -m align.run pipeline`, or pass --model)")
            return ChatModel(name=EMBEDDED_DEFAULT, source=EMBEDDED_DEFAULT)
        log.info(f"model: the latest promoted chat model, {found}")
        spec = str(found)
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "manifest.json").is_file() and not (path / "config.json").is_file() \
            and not (path / "adapter_config.json").is_file():
        return _chat_model_of_folder(path)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        if manifest.get("stage") == "rm":
            raise ModelError(f"{path} is a reward model (stage rm), not a chat model: give an sft, dpo or ppo stage")
        if manifest.get("status") not in PROMOTABLE:
            log.info(f"{path} is not promoted ({gate_summary(manifest)}): chatting with it anyway")
        return ChatModel(name=str(path), source=str(path), manifest=manifest, run_dir=path.parent)
    return ChatModel(name=spec, source=spec)


def _chat_model_of_folder(path: Path) -> ChatModel:
    """A run folder (its best promoted chat stage) or a runs folder (its latest); anything else is refused."""
    stages = sorted(p.parent for p in path.glob("*/manifest.json"))
    if not stages:
        if any(path.glob("*/*/manifest.json")):  # a folder of runs
            found = latest_chat_model(path)
            if found is None:
                raise ModelError(f"no promoted ppo/dpo/sft model in any run under {path}")
            return resolve_chat_model(str(found), path)
        raise ModelError(f"{path}: not a run folder, a stage folder or a model folder (no manifest.json or "
                         f"config.json in it or in its subfolders)")
    best = best_stage_of_run(path)
    if best is None:
        found = "; ".join(f"{s.name}: {(read_manifest(s) or {}).get('status', '?')}" for s in stages)
        raise ModelError(f"run {path} has no promoted chat model (ppo, dpo or sft) — its stages: {found}. Name a "
                         f"stage folder (e.g. {stages[0]}) to chat with it anyway")
    log.info(f"model: {best} (the best promoted chat model of run {path.name})")
    return ChatModel(name=str(best), source=str(best), manifest=read_manifest(best), run_dir=path)


def default_store_path(model: ChatModel, runs_dir: str | Path = "runs") -> Path:
    """runs/<run>/labels.sqlite for a run's model, else <runs_dir>/labels.sqlite."""
    if model.run_dir is not None:
        return model.run_dir / "labels.sqlite"
    return Path(runs_dir) / "labels.sqlite"


# ------------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    max_new_tokens: int = 256


def stream_replies(models: Sequence[ChatModel], messages: list[dict],
                   settings: GenerationSettings) -> Iterator[list[str]]:
    """Generate one reply per model at once; yield the list of texts so far after every new piece.

    Each model generates in its own thread into a `TextIteratorStreamer`; a pump thread per model moves
    the pieces to one queue, so both columns of compare mode grow together.
    """
    from transformers import TextIteratorStreamer

    events: queue.Queue = queue.Queue()

    def pump(index: int, chat_model: ChatModel) -> None:
        try:
            chat_model.load()
            streamer = TextIteratorStreamer(chat_model.tokenizer, skip_prompt=True, skip_special_tokens=True)

            def generate() -> None:
                try:
                    chat_model.generate(messages, settings, streamer)
                except BaseException as error:  # noqa: BLE001 — reported to the page, not lost in a thread
                    events.put((index, error))
                    streamer.end()

            threading.Thread(target=generate, daemon=True, name=f"align-chat-generate-{index}").start()
            for piece in streamer:
                if piece:
                    events.put((index, piece))
        except BaseException as error:  # noqa: BLE001
            events.put((index, error))
        finally:
            events.put((index, None))

    for index, chat_model in enumerate(models):
        threading.Thread(target=pump, args=(index, chat_model), daemon=True, name=f"align-chat-pump-{index}").start()
    texts, running = [""] * len(models), len(models)
    while running:
        index, piece = events.get()
        if piece is None:
            running -= 1
        elif isinstance(piece, BaseException):
            raise ModelError(f"{models[index].name}: generation failed: {type(piece).__name__}: {piece}")
        else:
            texts[index] += piece
            yield list(texts)
    yield [text.strip() for text in texts]


# ---------------------------------------------------------------------------------------- filter
class ToxicityFilter:
    """Withholds replies whose toxicity score is above `threshold`; the scorer loads on first use."""

    def __init__(self, threshold: float, scorer: str = "offline"):
        self.threshold = float(threshold)
        self.spec = scorer
        self._scorer = None
        self._lock = threading.Lock()

    def load(self):
        with self._lock:
            if self._scorer is None:
                from align.gates.toxicity import load_scorer

                log.info(f"loading the toxicity scorer '{self.spec}' for the output filter ...")
                self._scorer = load_scorer(self.spec)
        return self._scorer

    def score(self, text: str) -> float:
        return float(self.load().score([text])["toxicity"][0])

    def describe(self) -> str:
        return f"on: replies with toxicity above {self.threshold:g} are withheld (scorer: {self.spec})"


def withheld_text(score: float, threshold: float) -> str:
    return f"Reply withheld by the output filter: toxicity {score:.2f} is above {threshold:g}."


def generating_text(characters: int) -> str:
    return f"Generating… {characters} characters so far; shown once the toxicity check has passed."


def withheld_notice(score: float, threshold: float) -> str:
    return notice_html(withheld_text(score, threshold))


def generating_notice(characters: int) -> str:
    return notice_html(generating_text(characters))


# -------------------------------------------------------------------------------------------- app
_TEMPLATES = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_MODELS = _TEMPLATES.from_string(
    '{% if compare is none %}<div class="align-model"><b>Model</b>: <code>{{ a.name }}</code> · {{ a.verdict }}</div>'
    '{% else %}<div class="align-model"><b>Model A / Model B</b>: a blind comparison of</div>'
    '{% for m in (a, compare) %}<div class="align-model">· <code>{{ m.name }}</code> · {{ m.verdict }}</div>'
    '{% endfor %}<div class="align-model">{{ note }}</div>{% endif %}')
_NOTICE_LINE = _TEMPLATES.from_string('<div class="align-model">{{ text }}<code>{{ code }}</code></div>')


def models_html(model: ChatModel, compare: ChatModel | None) -> str:
    """Which model(s) the page talks to, each with its status and gate verdict; in compare mode, not which
    column is which (that shows after the vote)."""
    return _MODELS.render(a=model, compare=compare, note=BLIND_NOTE)


def notice_line(text: str, code: str) -> str:
    return _NOTICE_LINE.render(text=text, code=code)


def store_name(store: LabelStore) -> str:
    """A SQLite store's file path, else its URL (password hidden)."""
    return store.engine.url.database if store.engine.dialect.name == "sqlite" else store.url


class ModelCache:
    """The comparison models loaded so far: at most `size`, the least recently used dropped first
    (a generation still running keeps its own reference)."""

    def __init__(self, resolve: Callable[[str], ChatModel], size: int = 2):
        self.resolve, self.size = resolve, max(1, size)
        self._models: OrderedDict[str, ChatModel] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, chat_model: ChatModel) -> None:
        with self._lock:
            self._models[chat_model.name] = chat_model
            self._trim()

    def get(self, name: str) -> ChatModel:
        with self._lock:
            if name not in self._models:
                self._models[name] = self.resolve(name)
            self._models.move_to_end(name)
            self._trim()
            return self._models[name]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def _trim(self) -> None:
        while len(self._models) > self.size:
            self._models.popitem(last=False)


def compare_names(model: ChatModel, compare: ChatModel | None, runs_dir: str | Path,
                  extra: Sequence[str] = ()) -> list[str]:
    """What the compare picker offers, fixed when the server starts: `--compare`, the `--compare-choice`
    models, and every chat-model stage under `runs_dir` (never model A itself)."""
    names = [*([compare.name] if compare else []), *extra, *chat_model_choices(Path(runs_dir))]
    return [name for name in dict.fromkeys(names) if name != model.name]


@dataclass
class ChatPage:
    """The chat page's components (built by `_settings_section` and `_conversation_section`)."""

    model_info: gr.HTML
    settings_line: str
    system_box: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    picker: gr.Dropdown
    chat_a: gr.Chatbot = None
    chat_b: gr.Chatbot = None
    column_b: gr.Column = None
    reveal: gr.Markdown = None
    thumbs_row: gr.Row = None
    thumbs_up: gr.Button = None
    thumbs_down: gr.Button = None
    choose_row: gr.Row = None
    choose_a: gr.Button = None
    choose_b: gr.Button = None
    message_box: gr.Textbox = None
    send_button: gr.Button = None
    clear_button: gr.Button = None
    status: gr.Markdown = None
    # what the /send API returns (the page shows the Chatbots instead): escaped HTML, as before
    api_conversation: gr.HTML = None
    api_reply_a: gr.HTML = None
    api_reply_b: gr.HTML = None
    api_send: gr.Button = None
    history_state: gr.State = None  # the conversation so far (user/assistant turns, no system prompt)
    pending_state: gr.State = None  # the latest reply (or two) awaiting feedback


BLIND_NOTE = "Model A and Model B take the two models in a random order each round; which is which shows after your vote."


def _settings_section(model: ChatModel, compare: ChatModel | None, settings: GenerationSettings,
                      picker_choices: list, settings_line: str) -> ChatPage:
    model_info = gr.HTML(models_html(model, compare) + settings_line, elem_id="model-info")
    with gr.Accordion("System prompt and generation settings", open=False):
        system_box = gr.Textbox(label="System prompt", lines=2, elem_id="system-prompt",
                                placeholder="(optional) e.g. You are a helpful, harmless assistant.")
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="temperature")
            top_p = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p", elem_id="top-p")
            max_tokens = gr.Slider(1, 1024, value=settings.max_new_tokens, step=1, label="Max new tokens",
                                   elem_id="max-new-tokens")
        picker = gr.Dropdown(picker_choices, value=compare.name if compare else "", label="Compare with",
                             elem_id="compare-with", allow_custom_value=False,
                             info="a second model; its replies and the first model's appear side by side, "
                                  "unlabelled until you vote (the models this server was started with)")
    return ChatPage(model_info, settings_line, system_box, temperature, top_p, max_tokens, picker)


def _chatbot(label: str, elem_id: str) -> gr.Chatbot:
    """A chat column: markdown rendered, HTML sanitised (and escaped beforehand: `inert_markdown`), copy buttons,
    the last user turn editable, a retry button on the last reply."""
    return gr.Chatbot(label=label, elem_id=elem_id, height=460, render_markdown=True, sanitize_html=True,
                      allow_tags=False, editable="user", buttons=["copy", "copy_all"], group_consecutive_messages=False,
                      latex_delimiters=[])


def _conversation_section(page: ChatPage, compare: ChatModel | None) -> None:
    with gr.Row():
        with gr.Column():
            page.chat_a = _chatbot("Model A" if compare else "Conversation", "chat-a")
        with gr.Column(visible=compare is not None) as page.column_b:
            page.chat_b = _chatbot("Model B", "chat-b")
    page.reveal = gr.Markdown(BLIND_NOTE, elem_id="reveal", visible=compare is not None)
    with gr.Row(visible=compare is None) as page.thumbs_row:
        page.thumbs_up = gr.Button("▲ Good reply", elem_id="thumbs-up", size="sm")
        page.thumbs_down = gr.Button("▼ Bad reply", elem_id="thumbs-down", size="sm")
    with gr.Row(visible=compare is not None) as page.choose_row:
        page.choose_a = gr.Button("A is better", elem_id="choose-a", size="sm")
        page.choose_b = gr.Button("B is better", elem_id="choose-b", size="sm")
    page.message_box = gr.Textbox(label="Message", placeholder="Type a message and press Enter", elem_id="message",
                                  lines=1)
    with gr.Row():
        page.send_button = gr.Button("Send", variant="primary", elem_id="send")
        page.clear_button = gr.Button("New conversation", elem_id="clear")
    page.status = gr.Markdown(elem_id="status")
    with gr.Group(visible=False):
        page.api_conversation = gr.HTML(elem_id="api-conversation")
        page.api_reply_a = gr.HTML(elem_id="api-reply-a")
        page.api_reply_b = gr.HTML(elem_id="api-reply-b")
        page.api_send = gr.Button("send (API)", elem_id="api-send")
    page.history_state = gr.State([])
    page.pending_state = gr.State(None)


def committed(history: list, pending: dict | None) -> list:
    """The conversation with the latest reply joined in: the chosen one, else A (never a withheld one)."""
    if not pending:
        return list(history)
    kept = [i for i, w in enumerate(pending["withheld"]) if not w]
    if not kept:  # every reply withheld: the user's message leaves the conversation too
        return list(history)
    index = pending["chosen"] if pending.get("chosen") is not None else kept[0]
    return list(pending["turns"]) + [{"role": "assistant", "content": pending["replies"][index]}]


def chat_messages(turns: list[dict], reply: str | None = None) -> list[dict]:
    """A Chatbot's value: the turns and a reply (markdown, made inert), roles as the messages format has them."""
    shown = [{"role": m["role"], "content": inert_markdown(m["content"])} for m in turns]
    if reply is not None:
        shown.append({"role": "assistant", "content": reply})
    return shown


def _wire_sending(page: ChatPage, model: ChatModel, compare_model: Callable, reply_filter: ToxicityFilter | None,
                  shuffle: random.Random) -> None:
    """Send, retry and edit (page), /send (API), and /clear; all run one round of `run_round`."""

    def run_round(message, history, system_prompt, temperature, top_p, max_new_tokens, compare_with):
        """One round: yields ("turns", turns), ("texts", texts) while streaming, then ("done", pending, notes)."""
        turns = list(history) + [{"role": "user", "content": message}]
        prompt = ([{"role": "system", "content": system_prompt}] if (system_prompt or "").strip() else []) + turns
        try:
            second = compare_model(compare_with)
        except AlignError as error:
            raise gr.Error(str(error)) from error
        models = [model] + ([second] if second is not None else [])
        run_settings = GenerationSettings(float(temperature), float(top_p), int(max_new_tokens))
        yield "turns", turns
        texts: list[str] = [""] * len(models)
        try:
            for texts in stream_replies(models, prompt, run_settings):
                yield "texts", texts
        except AlignError as error:
            raise gr.Error(str(error)) from error
        scores = [reply_filter.score(text) if reply_filter else None for text in texts]
        withheld = [score is not None and score > reply_filter.threshold for score in scores]
        notes = [f"a reply was withheld (toxicity {score:.2f})" for score, w in zip(scores, withheld) if w]
        pending = {"prompt": prompt, "turns": turns, "replies": texts, "withheld": withheld, "scores": scores,
                   "models": [m.name for m in models], "chosen": None, "rated": None}
        yield "done", pending, notes

    def done_line(pending: dict, notes: list[str]) -> str:
        done = "Done." if not notes else "Done; " + "; ".join(notes) + "."
        if len(pending["replies"]) == 1 and not pending["withheld"][0]:
            done += " Rate the reply: good or bad?"
        elif len(pending["replies"]) == 2 and not any(pending["withheld"]):
            done += " Which reply is better?"
        return done

    def shown_reply(pending: dict, index: int) -> str:
        """A finished reply as a Chatbot shows it: markdown made inert, or the notice if the filter withheld it."""
        if pending["withheld"][index]:
            return withheld_text(pending["scores"][index], reply_filter.threshold)
        return inert_markdown(pending["replies"][index])

    # --------------------------------------------------------------------------------- the page
    def page_round(message, history, system_prompt, temperature, top_p, max_new_tokens, compare_with):
        """The Chatbots' updates for one round; in compare mode the columns take the replies in a random order."""
        turns, order = [], [0]
        for event in run_round(message, history, system_prompt, temperature, top_p, max_new_tokens, compare_with):
            if event[0] == "turns":
                turns = event[1]
                blind = bool(compare_with)
                yield {page.chat_a: gr.update(value=chat_messages(turns, ""), label="Model A" if blind else "Conversation"),
                       page.chat_b: gr.update(value=chat_messages(turns, ""), label="Model B"), page.message_box: "", page.status: "Generating…",
                       page.history_state: history, page.pending_state: None}
            elif event[0] == "texts":
                texts = event[1]
                if len(texts) == 2 and len(order) == 1:
                    order = shuffle.sample([0, 1], 2)
                shown = [generating_text(len(t)) if reply_filter else inert_markdown(t) for t in texts]
                update = {page.chat_a: chat_messages(turns, shown[order[0]])}
                if len(texts) == 2:
                    update[page.chat_b] = chat_messages(turns, shown[order[1]])
                yield update
            else:
                _, pending, notes = event
                if len(pending["replies"]) == 2 and len(order) == 1:
                    order = shuffle.sample([0, 1], 2)
                pending["order"] = order
                shown = [shown_reply(pending, i) for i in range(len(pending["replies"]))]
                blind = len(shown) == 2
                yield {page.chat_a: gr.update(value=chat_messages(turns, shown[order[0]]),
                                              label="Model A" if blind else "Conversation"),
                       page.chat_b: gr.update(value=chat_messages(turns, shown[order[1]]) if blind else [],
                                              label="Model B"),
                       page.reveal: BLIND_NOTE, page.status: done_line(pending, notes), page.pending_state: pending}

    def send_page(message, system_prompt, temperature, top_p, max_new_tokens, compare_with, history, pending):
        if not (message or "").strip():
            yield {page.status: "Type a message first."}
            return
        yield from page_round(message, committed(history or [], pending), system_prompt, temperature, top_p,
                              max_new_tokens, compare_with)

    def retry_page(system_prompt, temperature, top_p, max_new_tokens, compare_with, history, pending):
        """A new reply (or pair) to the last message, in place of the last one."""
        if not pending:
            yield {page.status: "Nothing to retry yet: send a message first."}
            return
        yield from page_round(pending["turns"][-1]["content"], pending["turns"][:-1], system_prompt, temperature,
                              top_p, max_new_tokens, compare_with)

    def edit_page(system_prompt, temperature, top_p, max_new_tokens, compare_with, history, pending,
                  edit: gr.EditData):
        """The last user message, edited: the round runs again from it (earlier turns are not editable)."""
        value = edit.value.get("text", edit.value.get("content", "")) if isinstance(edit.value, dict) else edit.value
        if isinstance(value, list):
            value = " ".join(str(part.get("text", part)) if isinstance(part, dict) else str(part) for part in value)
        if not pending or edit.index != len(pending["turns"]) - 1 or not str(value or "").strip():
            if pending:  # the columns as they were: the last message and its reply (or two), in the round's order
                order = pending.get("order") or [0, 1][:len(pending["replies"])]
                restore = [chat_messages(pending["turns"], shown_reply(pending, i)) for i in order]
            else:
                restore = [chat_messages(history or [])]
            yield {page.chat_a: restore[0], page.chat_b: restore[-1] if len(restore) > 1 else [],
                   page.status: "Only the last message can be edited (the conversation was restored)."}
            return
        yield from page_round(str(value), pending["turns"][:-1], system_prompt, temperature, top_p, max_new_tokens,
                              compare_with)

    settings_inputs = [page.system_box, page.temperature, page.top_p, page.max_tokens, page.picker,
                       page.history_state, page.pending_state]
    page_outputs = [page.chat_a, page.chat_b, page.reveal, page.status, page.history_state, page.pending_state,
                    page.message_box]
    # the progress timer goes on the status line, not over the replies as they stream
    for trigger in (page.send_button.click, page.message_box.submit):
        trigger(send_page, [page.message_box, *settings_inputs], page_outputs, api_visibility="private",
                show_progress_on=page.status)
    for chatbot in (page.chat_a, page.chat_b):
        chatbot.retry(retry_page, settings_inputs, page_outputs, api_visibility="private", show_progress_on=page.status)
        chatbot.edit(edit_page, settings_inputs, page_outputs, api_visibility="private", show_progress_on=page.status)

    # ---------------------------------------------------------------------------------- the API
    def send_api(message, system_prompt, temperature, top_p, max_new_tokens, compare_with, history, pending):
        """Stream the reply (or two) to `message` as escaped HTML; model A's reply first, then model B's."""
        if not (message or "").strip():
            yield {page.status: "Type a message first."}
            return
        history = committed(history or [], pending)
        shown, view = [], {}
        for event in run_round(message, history, system_prompt, temperature, top_p, max_new_tokens, compare_with):
            if event[0] == "turns":
                view = {page.api_conversation: conversation_html(event[1]), page.api_reply_a: "",
                        page.api_reply_b: "", page.message_box: "", page.status: "Generating…",
                        page.history_state: history, page.pending_state: None}
                yield view
            elif event[0] == "texts":
                shown = [generating_notice(len(t)) if reply_filter else text_html(t) for t in event[1]]
                yield {page.api_reply_a: shown[0], page.api_reply_b: shown[1] if len(shown) > 1 else ""}
            else:
                _, pending, notes = event
                shown = [withheld_notice(pending["scores"][i], reply_filter.threshold) if pending["withheld"][i]
                         else text_html(pending["replies"][i]) for i in range(len(pending["replies"]))]
                yield {**view, page.api_reply_a: shown[0], page.api_reply_b: shown[1] if len(shown) > 1 else "",
                       page.status: done_line(pending, notes), page.pending_state: pending}  # all of it, at the end

    page.api_send.click(send_api, [page.message_box, *settings_inputs],
                        [page.api_conversation, page.api_reply_a, page.api_reply_b, page.status, page.history_state,
                         page.pending_state, page.message_box], api_name="send", show_progress_on=page.status)

    def clear():
        return [], gr.update(value=[], label="Model B"), "", "", "", "New conversation.", [], None

    cleared = [page.chat_a, page.chat_b, page.api_conversation, page.api_reply_a, page.api_reply_b, page.status,
               page.history_state, page.pending_state]
    page.clear_button.click(clear, None, cleared, api_name="clear")
    for chatbot in (page.chat_a, page.chat_b):  # a Chatbot's own clear button starts over too
        chatbot.clear(clear, None, cleared, api_visibility="private")


def _wire_feedback(page: ChatPage, store: LabelStore, who: Callable) -> None:
    """Thumbs on a single reply; a vote between columns A and B, recorded as a preference pair, then the reveal."""

    def rate(rating: str, pending: dict | None, request: gr.Request | None):
        name, auth = who(request)
        if not pending or len(pending["replies"]) != 1:
            return "Nothing to rate yet: send a message (without comparison) first.", pending
        if pending["withheld"][0]:
            return "A withheld reply cannot be rated.", pending
        if pending.get("rated"):
            return f"Already rated this reply ({pending['rated']}).", pending
        feedback_id = store.add_feedback(pending["prompt"], pending["replies"][0], rating=rating, user=name,
                                         model=pending["models"][0], auth=auth)
        return f"Saved: {'good' if rating == 'up' else 'bad'} reply (feedback #{feedback_id}).", {**pending, "rated": rating}

    def choose(column: int, pending: dict | None, request: gr.Request | None):
        """Column A or B is better; the columns map to the models through the round's order (the API's: A, B)."""
        name, auth = who(request)
        if not pending or len(pending["replies"]) != 2:
            return "Nothing to compare yet: pick a model under “Compare with” and send a message.", pending
        if any(pending["withheld"]):
            return "A withheld reply cannot be compared.", pending
        order = pending.get("order") or [0, 1]
        if pending.get("chosen") is not None:
            return f"Already recorded: {'AB'[order.index(pending['chosen'])]} is better.", pending
        index = order[column]
        other = 1 - index
        feedback_id = store.add_feedback(pending["prompt"], pending["replies"][index],
                                         rejected=pending["replies"][other], user=name, auth=auth,
                                         model=f"{pending['models'][index]} > {pending['models'][other]}")
        return (f"Saved: {'AB'[column]} is better (feedback #{feedback_id}); it continues the conversation.",
                {**pending, "chosen": index})

    def reveal(pending: dict | None):
        """After a vote: which model each column was."""
        if not pending or len(pending["replies"]) != 2 or pending.get("chosen") is None:
            return gr.update(), gr.update(), gr.update()
        names = [pending["models"][i] for i in pending.get("order") or [0, 1]]
        line = f"Model A was `{names[0]}` · Model B was `{names[1]}`."
        return line, gr.update(label=f"Model A: {names[0]}"), gr.update(label=f"Model B: {names[1]}")

    def thumbs_up_(pending, request: gr.Request):
        return rate("up", pending, request)

    def thumbs_down_(pending, request: gr.Request):
        return rate("down", pending, request)

    def choose_a_(pending, request: gr.Request):
        return choose(0, pending, request)

    def choose_b_(pending, request: gr.Request):
        return choose(1, pending, request)

    feedback_outputs = [page.status, page.pending_state]
    page.thumbs_up.click(thumbs_up_, page.pending_state, feedback_outputs, api_name="thumbs_up")
    page.thumbs_down.click(thumbs_down_, page.pending_state, feedback_outputs, api_name="thumbs_down")
    for button, handler, api_name in ((page.choose_a, choose_a_, "choose_a"), (page.choose_b, choose_b_, "choose_b")):
        button.click(handler, page.pending_state, feedback_outputs, api_name=api_name).then(
            reveal, page.pending_state, [page.reveal, page.chat_a, page.chat_b], api_visibility="private")


def _wire_picker(page: ChatPage, model: ChatModel, compare_model: Callable) -> None:
    def pick(name: str | None):
        try:
            second = compare_model(name)
            if second is not None:
                second.load()
        except AlignError as error:
            raise gr.Error(str(error)) from error
        on = second is not None
        note = f"Comparing with {second.name}." if on else "Comparison off."
        return (models_html(model, second) + page.settings_line, gr.update(visible=on), gr.update(visible=not on),
                gr.update(visible=on), gr.update(visible=on, value=BLIND_NOTE),
                gr.update(label="Model A" if on else "Conversation"), note)

    page.picker.change(pick, page.picker, [page.model_info, page.column_b, page.thumbs_row, page.choose_row,
                                           page.reveal, page.chat_a, page.status], api_visibility="private")


def build_app(model: ChatModel, *, store: LabelStore, compare: ChatModel | None = None,
              runs_dir: str | Path = "runs", compare_choices: Sequence[str] = (),
              reply_filter: ToxicityFilter | None = None, user: str | None = None, loaded_models: int = 2,
              settings: GenerationSettings = GenerationSettings(), title: str = "align · chat",
              seed: int | None = None) -> gr.Blocks:
    """The chat app for `model` (and optionally a second model to compare with), feedback into `store`.

    The compare picker offers `compare_names(...)` only; a name not on that list is refused without
    looking it up, and a picked model loads on first use, kept in a `ModelCache` of `loaded_models`.
    Feedback is credited to the signed-in account (serve it with `launch(..., login=...)`); `user`
    is for a server without sign-in (``--no-auth``, loopback only): its rows carry that name and
    ``auth="none"``. `seed` fixes the page's random column order in compare mode (None: fresh).
    """
    offered = compare_names(model, compare, runs_dir, compare_choices)
    cache = ModelCache(lambda name: resolve_chat_model(name, runs_dir), size=loaded_models)
    if compare is not None:
        cache.put(compare)
    picker_choices = [("no comparison", "")] + [(name, name) for name in offered]

    def compare_model(name: str | None) -> ChatModel | None:
        if not name:
            return None
        if name not in offered:  # never resolved: the answer says nothing about what exists on this machine
            raise AlignError(f"{name!r} is not one of the models this server offers for comparison")
        return cache.get(name)

    def who(request: gr.Request | None) -> tuple[str, str]:
        """The name feedback is credited to, and how it was known ("login" or "none")."""
        name = signed_in_name(request)
        if name:
            return name, "login"
        if user is not None:
            return user, "none"
        raise gr.Error("Not signed in.")

    filter_line = reply_filter.describe() if reply_filter else "off"
    settings_line = notice_line(f"Output filter: {filter_line} · feedback goes to ", store_name(store))
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {html.escape(title)}")
        page = _settings_section(model, compare, settings, picker_choices, settings_line)
        _conversation_section(page, compare)
        _wire_sending(page, model, compare_model, reply_filter, random.Random(seed))
        _wire_feedback(page, store, who)
        _wire_picker(page, model, compare_model)
    return app


# ----------------------------------------------------------------------------------------- server
def launch(app: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None,
           login: GuardedLogin | None = None, tls: TLSFiles | None = None, block: bool = False,
           quiet: bool = True) -> str:
    """Start `app` on host:port, signing people in through `login` (None only for --no-auth on a
    loopback host) and serving HTTPS with `tls`; return its URL (non-blocking unless `block`)."""
    if login is None and not is_loopback(host):
        raise AlignError(f"the chat app without sign-in (--no-auth) is served on loopback hosts only "
                         f"(127.0.0.1, ::1, localhost), not --host {host}")
    app.queue(default_concurrency_limit=1)  # one generation at a time: the CPU is the limit
    return access.launch(app, host=host, port=port, login=login, tls=tls, block=block, quiet=quiet,
                         auth_message="Sign in with your align account (the label store's).", css=CSS)


def serve(model_spec: str | None = None, *, compare: str | None = None, compare_choices: Sequence[str] = (),
          store: str | None = None, runs_dir: str | Path = "runs", host: str = "127.0.0.1",
          port: int | None = None, filter_threshold: float | None = None, scorer: str = "offline",
          no_auth: bool = False, user: str | None = None, tls: TLSFiles | None = None,
          block: bool = True) -> gr.Blocks:
    """Resolve and load the model(s), open the label store, and serve the chat app.

    Sign-in uses the label store's accounts; `no_auth` (loopback hosts only) serves without it and
    credits feedback to `user`, recorded as such."""
    if no_auth and not is_loopback(host):
        raise AlignError(f"--no-auth serves the chat app without sign-in, so only on a loopback host "
                         f"(127.0.0.1, ::1, localhost), not --host {host}; drop --no-auth to sign in with "
                         f"the label store's accounts")
    chat_model = resolve_chat_model(model_spec, runs_dir)
    second = resolve_chat_model(compare, runs_dir) if compare else None
    store_location = store or default_store_path(chat_model, runs_dir)
    label_store = open_store(store_location)
    if not no_auth and not label_store.annotator_names():
        raise AlignError(f"label store {store_name(label_store)} has no accounts to sign in with: add one with "
                         f"`python -m align.run label --store {store_location} --add-user NAME`, or chat on "
                         f"this machine only with --no-auth")
    chat_model.load()
    if second is not None:
        second.load()
    reply_filter = None
    if filter_threshold is not None:
        reply_filter = ToxicityFilter(filter_threshold, scorer)
        reply_filter.load()  # now, not on the first reply: building the offline scorer takes minutes once
    app = build_app(chat_model, store=label_store, compare=second, compare_choices=compare_choices,
                    runs_dir=runs_dir, reply_filter=reply_filter, user=user if no_auth else None)
    print(f"align chat: {chat_model.name} ({chat_model.verdict})"
          + (f" vs {second.name} ({second.verdict})" if second else "")
          + f"; feedback to {store_name(label_store)}; "
          + ("NO sign-in (--no-auth)" if no_auth else "sign-in with the store's accounts")
          + f"; serving {'https' if tls else 'http'}://{host}:{port}", flush=True)
    launch(app, host=host, port=port, login=None if no_auth else GuardedLogin(label_store.check_password),
           tls=tls, block=block)
    return app

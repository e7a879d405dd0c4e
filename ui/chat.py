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
``--user`` and ``auth="none"``. Model text is shown as text: every message is HTML-escaped (``ui.label.text_html``).

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
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from align.errors import AlignError, ModelError
from align.runs import PROMOTABLE, failed_checks, finished_stages, read_manifest
from align.data.store import LabelStore, open_store
from align.ui import access
from align.ui.access import GuardedLogin, TLSFiles, is_loopback
from align.ui.chat_cli import DEFAULT_PORT
from align.ui.label import conversation_html, text_html

#: Stages whose model one can chat with, best first within a run. (An rm stage is a reward model.)
CHAT_STAGES = ("ppo", "dpo", "sft")
EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
_LOAD_LOCK = threading.Lock()  # from_pretrained patches torch globally while it loads: never two at once

CSS = """
.align-turn { margin: 0 0 .6em 0; }
.align-role { font-weight: 600; text-transform: capitalize; margin-right: .4em; }
.align-text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: inherit; }
.align-reply { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: .6em .8em; min-height: 3em; }
.align-notice { font-style: italic; opacity: .75; }
.align-model { margin: .2em 0; }
"""


def _say(message: str) -> None:
    print(f"[align] {message}", flush=True)


# ----------------------------------------------------------------------------------------- models
def gate_summary(manifest: dict | None) -> str:
    """One line about a model's manifest: status, gate verdict, failed checks ("no gate run" when none)."""
    if manifest is None:
        return "no gate run (not an align stage folder)"
    status = manifest.get("status", "unknown status")
    gate = manifest.get("gate")
    if not gate:
        return f"{status} · no gate run"
    failed = failed_checks(manifest)
    if failed:
        line = f"{status} · gate {gate.get('verdict', 'fail')} · failed: {', '.join(failed)}"
    else:
        line = f"{status} · gate {gate.get('verdict', '?')} ({len(gate.get('checks', []))} checks passed)"
    if gate.get("override"):
        line += f" · override: {gate['override']}"
    return line


def best_stage_of_run(run_dir: Path) -> Path | None:
    """The run's promoted chat model: ppo, else dpo, else sft (promoted or overridden)."""
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

                _say(f"loading {self.name} ...")
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
            _say(f"no promoted ppo/dpo/sft model under {runs_dir}/: chatting with the base model {EMBEDDED_DEFAULT} "
                 f"(train one with `python -m align.run pipeline`, or pass --model)")
            return ChatModel(name=EMBEDDED_DEFAULT, source=EMBEDDED_DEFAULT)
        _say(f"model: the latest promoted chat model, {found}")
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
            _say(f"{path} is not promoted ({gate_summary(manifest)}): chatting with it anyway")
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
    _say(f"model: {best} (the best promoted chat model of run {path.name})")
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

                _say(f"loading the toxicity scorer '{self.spec}' for the output filter ...")
                self._scorer = load_scorer(self.spec)
        return self._scorer

    def score(self, text: str) -> float:
        return float(self.load().score([text])["toxicity"][0])

    def describe(self) -> str:
        return f"on: replies with toxicity above {self.threshold:g} are withheld (scorer: {self.spec})"


def withheld_notice(score: float, threshold: float) -> str:
    return (f'<div class="align-notice">Reply withheld by the output filter: toxicity {score:.2f} is above '
            f"{threshold:g}.</div>")


def generating_notice(characters: int) -> str:
    return (f'<div class="align-notice">Generating… {characters} characters so far; shown once the toxicity '
            f"check has passed.</div>")


# -------------------------------------------------------------------------------------------- app
def models_html(model: ChatModel, compare: ChatModel | None) -> str:
    """Which model(s) the page talks to, each with its status and gate verdict."""
    lines = [(label, m) for label, m in (("Model A", model), ("Model B", compare)) if m is not None]
    return "".join(f'<div class="align-model"><b>{label}</b>: <code>{html.escape(m.name)}</code> · '
                   f"{html.escape(m.verdict)}</div>" for label, m in lines)


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


def build_app(model: ChatModel, *, store: LabelStore, compare: ChatModel | None = None,
              runs_dir: str | Path = "runs", compare_choices: Sequence[str] = (),
              reply_filter: ToxicityFilter | None = None, user: str | None = None, loaded_models: int = 2,
              settings: GenerationSettings = GenerationSettings(), title: str = "align · chat") -> gr.Blocks:
    """The chat app for `model` (and optionally a second model to compare with), feedback into `store`.

    The compare picker offers `compare_names(...)` only; a name not on that list is refused without
    looking it up, and a picked model loads on first use, kept in a `ModelCache` of `loaded_models`.
    Feedback is credited to the signed-in account (serve it with `launch(..., login=...)`); `user`
    is for a server without sign-in (``--no-auth``, loopback only): its rows carry that name and
    ``auth="none"``.
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
        name = getattr(request, "username", None)
        if name:
            return name, "login"
        if user is not None:
            return user, "none"
        raise gr.Error("Not signed in.")

    filter_line = reply_filter.describe() if reply_filter else "off"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        history_state = gr.State([])  # the conversation so far (user/assistant turns, no system prompt)
        pending_state = gr.State(None)  # the latest reply (or two) awaiting feedback

        gr.Markdown(f"## {html.escape(title)}")
        settings_line = (f'<div class="align-model">Output filter: {html.escape(filter_line)} · feedback goes to '
                         f"<code>{html.escape(store_name(store))}</code></div>")
        model_info = gr.HTML(models_html(model, compare) + settings_line, elem_id="model-info")
        with gr.Accordion("System prompt and generation settings", open=False):
            system_box = gr.Textbox(label="System prompt", lines=2, elem_id="system-prompt",
                                    placeholder="(optional) e.g. You are a helpful, harmless assistant.")
            with gr.Row():
                temperature_slider = gr.Slider(0.0, 2.0, value=settings.temperature, step=0.05,
                                               label="Temperature (0 = greedy)", elem_id="temperature")
                top_p_slider = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p",
                                         elem_id="top-p")
                max_tokens_slider = gr.Slider(1, 1024, value=settings.max_new_tokens, step=1,
                                              label="Max new tokens", elem_id="max-new-tokens")
            picker = gr.Dropdown(picker_choices, value=compare.name if compare else "", label="Compare with",
                                 elem_id="compare-with", allow_custom_value=False,
                                 info="a second model whose replies appear beside model A's (the models "
                                      "this server was started with)")
        conversation = gr.HTML(elem_id="conversation", elem_classes=["align-reply"])
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Reply A**", elem_id="reply-a-title")
                reply_a = gr.HTML(elem_id="reply-a", elem_classes=["align-reply"])
            with gr.Column(visible=compare is not None) as column_b:
                gr.Markdown("**Reply B**")
                reply_b = gr.HTML(elem_id="reply-b", elem_classes=["align-reply"])
        with gr.Row(visible=compare is None) as thumbs_row:
            thumbs_up = gr.Button("▲ Good reply", elem_id="thumbs-up", size="sm")
            thumbs_down = gr.Button("▼ Bad reply", elem_id="thumbs-down", size="sm")
        with gr.Row(visible=compare is not None) as choose_row:
            choose_a = gr.Button("A is better", elem_id="choose-a", size="sm")
            choose_b = gr.Button("B is better", elem_id="choose-b", size="sm")
        message_box = gr.Textbox(label="Message", placeholder="Type a message and press Enter", elem_id="message",
                                 lines=1)
        with gr.Row():
            send_button = gr.Button("Send", variant="primary", elem_id="send")
            clear_button = gr.Button("New conversation", elem_id="clear")
        status = gr.Markdown(elem_id="status")

        # ---------------------------------------------------------------------------- sending
        def committed(history: list, pending: dict | None) -> list:
            """The conversation with the latest reply joined in: the chosen one, else A (never a withheld one)."""
            if not pending:
                return list(history)
            kept = [i for i, w in enumerate(pending["withheld"]) if not w]
            if not kept:  # every reply withheld: the user's message leaves the conversation too
                return list(history)
            index = pending["chosen"] if pending.get("chosen") is not None else kept[0]
            return list(pending["turns"]) + [{"role": "assistant", "content": pending["replies"][index]}]

        def send(message, system_prompt, temperature, top_p, max_new_tokens, compare_with, history, pending):
            """Stream the reply (or two) to `message`; yields the page's updates."""
            if not (message or "").strip():
                yield {status: "Type a message first."}
                return
            history = committed(history or [], pending)
            turns = history + [{"role": "user", "content": message}]
            prompt = ([{"role": "system", "content": system_prompt}] if (system_prompt or "").strip() else []) + turns
            try:
                second = compare_model(compare_with)
            except AlignError as error:
                raise gr.Error(str(error)) from error
            chosen_models = [model] + ([second] if second is not None else [])
            run_settings = GenerationSettings(float(temperature), float(top_p), int(max_new_tokens))
            page = {conversation: conversation_html(turns), reply_a: "", reply_b: "", message_box: "",
                    status: "Generating…", history_state: history, pending_state: None}
            yield page
            texts: list[str] = [""] * len(chosen_models)
            try:
                for texts in stream_replies(chosen_models, prompt, run_settings):
                    shown = [generating_notice(len(t)) if reply_filter else text_html(t) for t in texts]
                    yield {reply_a: shown[0], reply_b: shown[1] if len(shown) > 1 else ""}
            except AlignError as error:
                raise gr.Error(str(error)) from error
            withheld, shown, notes = [], [], []
            for text in texts:
                score = reply_filter.score(text) if reply_filter else None
                blocked = score is not None and score > reply_filter.threshold
                withheld.append(blocked)
                shown.append(withheld_notice(score, reply_filter.threshold) if blocked else text_html(text))
                if blocked:
                    notes.append(f"a reply was withheld (toxicity {score:.2f})")
            new_pending = {"prompt": prompt, "turns": turns, "replies": texts, "withheld": withheld,
                           "models": [m.name for m in chosen_models], "chosen": None, "rated": None}
            done = "Done." if not notes else "Done; " + "; ".join(notes) + "."
            if len(texts) == 1 and not withheld[0]:
                done += " Rate the reply: good or bad?"
            elif len(texts) == 2 and not any(withheld):
                done += " Which reply is better?"
            yield {**page, reply_a: shown[0], reply_b: shown[1] if len(shown) > 1 else "", status: done,
                   pending_state: new_pending}  # the whole page, so an API caller's result has it all

        send_inputs = [message_box, system_box, temperature_slider, top_p_slider, max_tokens_slider, picker,
                       history_state, pending_state]
        send_outputs = [conversation, reply_a, reply_b, status, history_state, pending_state, message_box]
        # the progress timer goes on the status line, not over the replies as they stream
        send_button.click(send, send_inputs, send_outputs, api_name="send", show_progress_on=status)
        message_box.submit(send, send_inputs, send_outputs, api_visibility="private", show_progress_on=status)

        def clear():
            return "", "", "", "New conversation.", [], None

        clear_button.click(clear, None, [conversation, reply_a, reply_b, status, history_state, pending_state],
                           api_name="clear")

        # --------------------------------------------------------------------------- feedback
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

        def choose(index: int, pending: dict | None, request: gr.Request | None):
            name, auth = who(request)
            if not pending or len(pending["replies"]) != 2:
                return "Nothing to compare yet: pick a model under “Compare with” and send a message.", pending
            if any(pending["withheld"]):
                return "A withheld reply cannot be compared.", pending
            if pending.get("chosen") is not None:
                return f"Already recorded: {'AB'[pending['chosen']]} is better.", pending
            other = 1 - index
            feedback_id = store.add_feedback(pending["prompt"], pending["replies"][index],
                                             rejected=pending["replies"][other], user=name, auth=auth,
                                             model=f"{pending['models'][index]} > {pending['models'][other]}")
            return (f"Saved: {'AB'[index]} is better (feedback #{feedback_id}); it continues the conversation.",
                    {**pending, "chosen": index})

        feedback_outputs = [status, pending_state]
        def thumbs_up_(pending, request: gr.Request):
            return rate("up", pending, request)

        def thumbs_down_(pending, request: gr.Request):
            return rate("down", pending, request)

        def choose_a_(pending, request: gr.Request):
            return choose(0, pending, request)

        def choose_b_(pending, request: gr.Request):
            return choose(1, pending, request)

        thumbs_up.click(thumbs_up_, pending_state, feedback_outputs, api_name="thumbs_up")
        thumbs_down.click(thumbs_down_, pending_state, feedback_outputs, api_name="thumbs_down")
        choose_a.click(choose_a_, pending_state, feedback_outputs, api_name="choose_a")
        choose_b.click(choose_b_, pending_state, feedback_outputs, api_name="choose_b")

        # ----------------------------------------------------------------------- compare pick
        def pick(name: str | None):
            try:
                second = compare_model(name)
                if second is not None:
                    second.load()
            except AlignError as error:
                raise gr.Error(str(error)) from error
            on = second is not None
            note = f"Comparing with {second.name}." if on else "Comparison off."
            return (models_html(model, second) + settings_line, gr.update(visible=on), gr.update(visible=not on),
                    gr.update(visible=on), note)

        picker.change(pick, picker, [model_info, column_b, thumbs_row, choose_row, status],
                      api_visibility="private")
    return app


# ----------------------------------------------------------------------------------------- server
def launch(app: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT,
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
          port: int = DEFAULT_PORT, filter_threshold: float | None = None, scorer: str = "offline",
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

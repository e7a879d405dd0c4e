"""The labeling app: annotators rank candidate replies; admins watch progress, agreement, flags, and export.

    python -m align.run label --store runs/demo/labels.sqlite --add-user ada --role annotator
    python -m align.run label --store runs/demo/labels.sqlite --port 7861

An annotator logs in (Gradio's login page, checked against the store's scrypt hashes), sees one
prompt (the whole conversation so far) and its replies in an order shuffled per annotator, gives
each reply a rank (1 = best; equal numbers are ties) or ticks "all unacceptable", may flag replies,
and submits; the next item follows. Keyboard: ``a``–``h`` pick a reply, ``1``–``9`` rank the
picked reply and move on, ``u`` toggles all unacceptable, ``Enter`` submits.

Model text is shown as text: every reply and message is HTML-escaped before it reaches the page.

The same server answers API calls (``gradio_client``, logged in with ``auth=(name, password)``):
``/next_item`` → the caller's next item; ``/submit(item_id, ranking, all_unacceptable, flags)``
→ the stored label id; ``/export`` (admins) → the preference rows.

Only the annotator an item was given to may label it (`LabelStore.submit` checks the hold and the
item's quota in the same transaction); sign-ins are throttled per name and address (`ui.access`).

Holds: an item served to an annotator is held for them for ``hold_seconds``; holds lapse after
that, and `serve` drops all holds when the server starts (the people they were for lost their
page with the old process), so a restart releases held items at once.
"""

from __future__ import annotations

import html
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from align.errors import AlignError
from align.data.labels import FLAG_NAMES, RankingError, tiers_from_ranks
from align.data.store import DEFAULT_HOLD_SECONDS, LabelStore, open_store
from align.ui import access
from align.ui.access import GuardedLogin, TLSFiles
from align.ui.common import CSS, conversation_html, require_name, text_html

LETTERS = "ABCDEFGH"
MAX_REPLIES = len(LETTERS)

# Keyboard shortcuts. Radio inputs are clicked like a mouse would, so Gradio sees normal events.
SHORTCUTS_JS = """
<script>
(() => {
  let current = 0;
  // one element per reply slot (Gradio nests a Group's classes twice: keep the outer one)
  const slots = () => [...document.querySelectorAll('.align-slot')]
    .filter(el => el.offsetParent !== null && !el.parentElement.closest('.align-slot'));
  const mark = () => slots().forEach((el, i) => el.classList.toggle('align-picked', i === current));
  const typing = t => t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
                            (t.tagName === 'INPUT' && !['radio', 'checkbox'].includes(t.type)));
  document.addEventListener('keydown', ev => {
    if (typing(ev.target) || ev.altKey || ev.metaKey || (ev.ctrlKey && ev.key !== 'Enter')) return;
    const key = ev.key.toLowerCase(), all = slots();
    if (!all.length) return;
    if ('abcdefgh'.includes(key) && key.length === 1 && 'abcdefgh'.indexOf(key) < all.length) {
      current = 'abcdefgh'.indexOf(key); mark(); ev.preventDefault();
    } else if (/^[1-9]$/.test(key)) {
      const option = [...all[Math.min(current, all.length - 1)].querySelectorAll('input[type=radio]')]
        .find(input => input.value === key || (input.closest('label') || {}).textContent?.trim() === key);
      if (option) { option.click(); current = Math.min(current + 1, all.length - 1); mark(); }
      ev.preventDefault();
    } else if (key === 'u') {
      document.querySelector('#all-unacceptable input[type=checkbox]')?.click(); ev.preventDefault();
    } else if (key === 'enter' && ev.target.tagName !== 'BUTTON') {
      document.querySelector('#submit')?.click(); current = 0; setTimeout(mark, 300); ev.preventDefault();
    }
  });
  document.addEventListener('click', ev => { if (ev.target.closest && ev.target.closest('#submit')) { current = 0; setTimeout(mark, 300); } });
})();
</script>
"""


# ------------------------------------------------------------------------------------------- text
def reply_order(item_id: int, annotator: str, reply_ids: list[int], seed: int) -> list[int]:
    """The order one annotator sees an item's replies in: random, but the same on every reload."""
    order = list(reply_ids)
    random.Random(f"{seed}:{item_id}:{annotator}").shuffle(order)
    return order


# -------------------------------------------------------------------------------------------- app
def _who(request: gr.Request | None) -> str:
    return require_name(request, "Not logged in.")


def _admin_only(store: LabelStore, request: gr.Request | None) -> str:
    name = _who(request)
    if store.role(name) != "admin":
        raise gr.Error("Admins only.")
    return name


@dataclass
class LabelTab:
    """The components of the Label tab: one slot (group, reply, rank, flags) per possible reply."""

    header: gr.Markdown
    conversation: gr.HTML
    slots: list[tuple]
    all_unacceptable: gr.Checkbox
    submit: gr.Button
    status: gr.Markdown


def _label_tab() -> LabelTab:
    header = gr.Markdown(elem_id="header")
    gr.Markdown("Rank each reply: **1 = best**; give equal numbers for ties. Keys: "
                "`a`–`h` pick a reply, `1`–`9` rank it, `u` all unacceptable, `Enter` submit.")
    gr.Markdown("**Conversation so far**")
    conversation = gr.HTML(elem_id="conversation", elem_classes=["align-reply"])
    slots = []
    for letter in LETTERS:
        with gr.Group(visible=False, elem_classes=["align-slot"], elem_id=f"slot-{letter}") as group:
            gr.Markdown(f"#### Reply {letter}", padding=True)
            reply = gr.HTML(elem_id=f"reply-{letter}", elem_classes=["align-reply"])
            with gr.Row():
                rank = gr.Radio(choices=[], label=f"Rank of reply {letter}", elem_id=f"rank-{letter}", scale=2)
                flags = gr.CheckboxGroup(list(FLAG_NAMES), label=f"Flag reply {letter}", elem_id=f"flags-{letter}",
                                         scale=2)
        slots.append((group, reply, rank, flags))
    all_unacceptable = gr.Checkbox(label="All replies are unacceptable", elem_id="all-unacceptable")
    submit = gr.Button("Submit", variant="primary", elem_id="submit")
    status = gr.Markdown(elem_id="status")
    return LabelTab(header, conversation, slots, all_unacceptable, submit, status)


def _wire_labeling(app: gr.Blocks, store: LabelStore, tab: LabelTab, admin_tab: gr.Tab, k_order_seed: int) -> None:
    """Serve the next item on load and after each submit; check and store a submitted label."""
    item_state = gr.State(None)  # the item id on screen
    order_state = gr.State([])  # reply ids in display order
    slot_components = [c for slot in tab.slots for c in slot]
    screen = [tab.header, tab.conversation, tab.all_unacceptable, tab.status, item_state, order_state, admin_tab,
              *slot_components]

    def show_next(request: gr.Request, message: str = ""):
        name = _who(request)
        item = store.next_item(name)
        done = sum(1 for label in store.labels() if label.annotator == name)
        is_admin = store.role(name) == "admin"
        head = f"Signed in as **{html.escape(name)}** · {done} labeled"
        if item is None:
            empty = [gr.update(visible=False), gr.update(value=""), gr.update(value=None, choices=[]),
                     gr.update(value=[])] * MAX_REPLIES
            return [head, "<p>Nothing left to label. Thank you!</p>", gr.update(value=False, visible=False),
                    message, None, [], gr.update(visible=is_admin), *empty]
        order = reply_order(item.id, name, [r.id for r in item.replies], k_order_seed)
        text = {r.id: r.text for r in item.replies}
        choices = [str(i) for i in range(1, len(order) + 1)]
        updates = []
        for position in range(MAX_REPLIES):
            if position < len(order):
                updates += [gr.update(visible=True), gr.update(value=text_html(text[order[position]])),
                            gr.update(choices=choices, value=None), gr.update(value=[])]
            else:
                updates += [gr.update(visible=False), gr.update(value=""), gr.update(choices=[], value=None),
                            gr.update(value=[])]
        return [f"{head} · item {item.id}", conversation_html(item.prompt), gr.update(value=False, visible=True),
                message, item.id, order, gr.update(visible=is_admin), *updates]

    def unchanged_but(message: str) -> list:
        return [gr.update()] * 3 + [message] + [gr.update()] * (len(screen) - 4)

    def submit_from_page(values: dict, request: gr.Request):
        """The Submit button: `values` maps each input component to its value."""
        name = _who(request)
        item_id, order, unacceptable = values[item_state], values[order_state] or [], values[tab.all_unacceptable]
        if item_id is None:
            return show_next(request)
        ranks, flags = {}, {}
        for (_, _, rank_box, flags_box), reply_id in zip(tab.slots, order):
            if values[rank_box]:
                ranks[reply_id] = int(values[rank_box])
            if values[flags_box]:
                flags[reply_id] = list(values[flags_box])
        if not unacceptable and len(ranks) < len(order):
            missing = ", ".join(LETTERS[i] for i, r in enumerate(order) if r not in ranks)
            return unchanged_but(f"⚠️ Give every reply a rank (missing: {missing}), or tick *all unacceptable*.")
        ranking = tiers_from_ranks(ranks) if len(ranks) == len(order) else []
        try:
            store.submit(item_id, name, ranking, all_unacceptable=bool(unacceptable), flags=flags)
        except (RankingError, AlignError) as error:
            return unchanged_but(f"⚠️ {error}")
        return show_next(request, f"✅ Saved item {item_id}.")

    page_inputs = [item_state, order_state, tab.all_unacceptable]
    for _, _, rank, flags in tab.slots:
        page_inputs += [rank, flags]
    app.load(show_next, None, screen, api_visibility="private")
    tab.submit.click(submit_from_page, set(page_inputs), screen, api_visibility="private")


def _admin_section(store: LabelStore) -> gr.Tab:
    """The Admin tab (shown to admins only): progress, agreement, flagged replies, the export."""
    with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
        refresh_button = gr.Button("Refresh", elem_id="admin-refresh")
        summary = gr.Markdown(elem_id="admin-summary")
        per_annotator = gr.Dataframe(headers=["annotator", "role", "labels", "all unacceptable", "last label (UTC)"],
                                     label="Progress per annotator", interactive=False, elem_id="admin-progress")
        agreement_md = gr.Markdown(elem_id="admin-agreement")
        flagged = gr.Dataframe(headers=["item", "reply", "flag", "count", "annotators", "text"],
                               label="Flagged replies", interactive=False, elem_id="admin-flags",
                               datatype=["number", "number", "str", "number", "str", "str"])
        export_button = gr.Button("Export preferences (JSONL)", elem_id="admin-export")
        export_file = gr.File(label="Export", elem_id="admin-export-file", interactive=False)

    def admin_view(request: gr.Request):
        _admin_only(store, request)
        progress, figures = store.progress(), store.agreement()
        summary_md = (f"**{progress['items_complete']} of {progress['items']} items complete** "
                      f"({progress['annotators_per_item']} annotator(s) per item) · {progress['items_started']} "
                      f"started · {progress['labels']} of {progress['labels_needed']} labels · "
                      f"{len(store.active_holds())} held now")
        rows = [[p["annotator"], p["role"], p["labels"], p["all_unacceptable"],
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime(p["last_label_at"])) if p["last_label_at"] else ""]
                for p in progress["per_annotator"]]
        if figures["items"]:
            tau = "n/a" if figures["kendall_tau"] is None else f"{figures['kendall_tau']:.3f}"
            people = ", ".join(f"{html.escape(n)} {a:.0%}" for n, a in figures["per_annotator"].items())
            agreement_text = (f"**Agreement** on {figures['items']} items labeled by several: pairwise "
                              f"{figures['pairwise_agreement']:.1%} of {figures['comparisons']} comparisons · "
                              f"Kendall's tau (mean of {figures['tau_pairs']}) {tau} · per annotator: {people}")
        else:
            agreement_text = "**Agreement**: no item has two ranked labels yet."
        flag_rows = [[f["item_id"], f["reply_id"], f["flag"], f["count"], ", ".join(f["annotators"]),
                      f["reply"][:300]] for f in store.flagged_replies()]
        return summary_md, rows, agreement_text, flag_rows

    def export_jsonl(request: gr.Request):
        _admin_only(store, request)
        path = Path(tempfile.mkdtemp(prefix="align-export-")) / "preferences.jsonl"
        store.write_preferences_jsonl(path)
        return str(path)

    admin_outputs = [summary, per_annotator, agreement_md, flagged]
    refresh_button.click(admin_view, None, admin_outputs, api_visibility="private")
    admin_tab.select(admin_view, None, admin_outputs, api_visibility="private")
    export_button.click(export_jsonl, None, export_file, api_visibility="private")
    return admin_tab


def _register_api(store: LabelStore) -> None:
    """The endpoints gradio_client calls: /next_item, /submit, /export (admins)."""

    def next_item(request: gr.Request) -> dict:
        """The caller's next item (held for them): {"item_id", "prompt", "replies": [{"id", "text"}]}."""
        item = store.next_item(_who(request))
        if item is None:
            return {"item_id": None}
        return {"item_id": item.id, "prompt": item.prompt,
                "replies": [{"id": r.id, "text": r.text} for r in item.replies]}

    def submit(item_id: int, ranking: list, all_unacceptable: bool = False, flags: dict | None = None,
               request: gr.Request = None) -> dict:
        """Store the caller's label: ranking = tiers of reply ids, best first; flags = {reply id: [names]}."""
        try:
            label_id = store.submit(int(item_id), _who(request), ranking, all_unacceptable=bool(all_unacceptable),
                                    flags={int(k): v for k, v in (flags or {}).items()})
        except (RankingError, AlignError) as error:
            raise gr.Error(str(error)) from error
        return {"label_id": label_id}

    def export(request: gr.Request) -> list:
        """The consensus preference rows (admins only)."""
        _admin_only(store, request)
        return store.export_preferences()

    gr.api(next_item, api_name="next_item", concurrency_limit=None)
    gr.api(submit, api_name="submit", concurrency_limit=None)
    gr.api(export, api_name="export")


def build_app(store: LabelStore, *, k_order_seed: int = 0, hold_seconds: float | None = None,
              title: str = "align · labeling") -> gr.Blocks:
    """The labeling app over `store`. Launch it with `launch` (it needs the login from there).

    `k_order_seed` seeds the per-annotator shuffle of replies; `hold_seconds` (default: the
    store's) is how long a served item stays reserved for its annotator.
    """
    if hold_seconds is not None:
        store.hold_seconds = hold_seconds
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        with gr.Tabs():
            with gr.Tab("Label", id="label"):
                tab = _label_tab()
            admin_tab = _admin_section(store)
        _wire_labeling(app, store, tab, admin_tab, k_order_seed)
        _register_api(store)
    return app


# ----------------------------------------------------------------------------------------- server
def launch(app: gr.Blocks, store: LabelStore, *, host: str = "127.0.0.1", port: int | None = None,
           tls: TLSFiles | None = None, login: GuardedLogin | None = None, block: bool = False,
           quiet: bool = True) -> str:
    """Start `app` with the store's login (throttled: `ui.access`) on host:port, HTTPS with `tls`;
    return its URL (non-blocking unless `block`)."""
    app.queue(default_concurrency_limit=16)
    return access.launch(app, host=host, port=port, login=login or GuardedLogin(store.check_password),
                         auth_message="Sign in with your align labeling account.", tls=tls, block=block,
                         quiet=quiet, css=CSS, head=SHORTCUTS_JS)


def serve(store_url: str, host: str = "127.0.0.1", port: int | None = None, *, annotators_per_item: int = 1,
          hold_seconds: float = DEFAULT_HOLD_SECONDS, k_order_seed: int = 0, tls: TLSFiles | None = None,
          block: bool = True) -> gr.Blocks:
    """Open the store, drop stale holds, and serve the labeling app (blocks until stopped by default)."""
    store = open_store(store_url, annotators_per_item=annotators_per_item, hold_seconds=hold_seconds)
    if not store.annotator_names():
        raise AlignError(f"label store {store.url} has no accounts yet: add one with "
                         "`python -m align.run label --add-user NAME --role admin`")
    released = store.release_holds()
    app = build_app(store, k_order_seed=k_order_seed)
    print(f"align label: {store.count_items()} items in {store.url}; {annotators_per_item} annotator(s) per "
          f"item; released {released} hold(s) left by the last server; serving "
          f"{'https' if tls else 'http'}://{host}:{port}", flush=True)
    launch(app, store, host=host, port=port, tls=tls, block=block)
    return app

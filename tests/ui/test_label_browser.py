"""The labeling app in Debian's chromium: two annotators rank items (mouse and keyboard), the stored
rows and exported pairs are what they clicked, the admin view shows them, and model text never runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ui.label_support import chromium, log_in, make_store, running_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

LETTERS = "ABCDEFGH"
ITEMS = [(f"question {n}", [f"best answer {n}", f"middling answer {n}", f"worst answer {n}"]) for n in (1, 2, 3)]
# How each annotator ranks: text quality → rank number (equal numbers are ties).
ADA = {1: {"best": 1, "middling": 2, "worst": 3}, 2: {"best": 1, "middling": 2, "worst": 2},
       3: {"best": 1, "middling": 2, "worst": 3}}
BOB = {1: {"best": 1, "middling": 2, "worst": 3}, 2: {"best": 1, "middling": 2, "worst": 3},
       3: {"best": 3, "middling": 2, "worst": 1}}


def shown_replies(page) -> list[tuple[str, str]]:
    """(slot letter, reply text) for the replies on screen, in display order."""
    return [(letter, page.inner_text(f"#reply-{letter}").strip()) for letter in LETTERS
            if page.locator(f"#reply-{letter}").is_visible()]


def current_item(page) -> int:
    return int(page.inner_text("#header").rsplit("item", 1)[1])


def wait_labeled(page, count: int) -> None:
    page.wait_for_function(f"document.querySelector('#header').innerText.includes('{count} labeled')",
                           timeout=30_000)


def label_with_mouse(page, plan, flag_worst_of=None):
    for done in range(len(plan)):
        item = current_item(page)
        for letter, text in shown_replies(page):
            rank = plan[item][text.split()[0]]
            page.locator(f'#rank-{letter} input[value="{rank}"]').check()
            if item == flag_worst_of and text.startswith("worst"):
                page.locator(f"#flags-{letter}").get_by_label("toxic").check()
        page.click("#submit")
        wait_labeled(page, done + 1)


def label_with_keyboard(page, plan):
    for done in range(len(plan)):
        item = current_item(page)
        page.click("#header")  # focus the page, not a field
        page.keyboard.press("a")
        for _, text in shown_replies(page):
            page.keyboard.press(str(plan[item][text.split()[0]]))  # ranks the picked reply, moves on
        page.keyboard.press("Enter")
        wait_labeled(page, done + 1)


def test_two_annotators_rank_items_and_the_admin_exports_consensus_pairs(tmp_path):
    store = make_store(tmp_path / "labels.sqlite", items=ITEMS, annotators_per_item=2)
    text_of = {r.id: r.text for item_id in (1, 2, 3) for r in store.item(item_id).replies}
    with running_app(store) as url, chromium() as browser:
        ada = log_in(browser, url, "ada")
        assert not ada.get_by_role("tab", name="Admin").is_visible()  # annotators see no admin tab
        label_with_mouse(ada, ADA, flag_worst_of=1)
        assert "Nothing left to label" in ada.inner_text("#conversation")

        bob = log_in(browser, url, "bob")
        label_with_keyboard(bob, BOB)

        # stored rows: one label per (item, annotator), tiers best first, ties kept, flags per reply
        stored = {(label.item_id, label.annotator): [[text_of[r].split()[0] for r in tier] for tier in label.ranking]
                  for label in store.labels()}
        assert stored == {
            (1, "ada"): [["best"], ["middling"], ["worst"]], (2, "ada"): [["best"], ["middling", "worst"]],
            (3, "ada"): [["best"], ["middling"], ["worst"]],
            (1, "bob"): [["best"], ["middling"], ["worst"]], (2, "bob"): [["best"], ["middling"], ["worst"]],
            (3, "bob"): [["worst"], ["middling"], ["best"]]}
        [flag] = store.flagged_replies()
        assert (flag["reply"], flag["flag"], flag["annotators"]) == ("worst answer 1", "toxic", ["ada"])

        # exported pairs follow the consensus rule: both agree on item 1; on item 2 the tie drops
        # middling-vs-worst; on item 3 they disagree on every pair
        pairs = [(row["prompt"][0]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"])
                 for row in store.export_preferences()]
        assert pairs == [("question 1", "best answer 1", "middling answer 1"),
                         ("question 1", "best answer 1", "worst answer 1"),
                         ("question 1", "middling answer 1", "worst answer 1"),
                         ("question 2", "best answer 2", "middling answer 2"),
                         ("question 2", "best answer 2", "worst answer 2")]

        boss = log_in(browser, url, "boss")
        boss.get_by_role("tab", name="Admin").click()
        boss.wait_for_function("document.querySelector('#admin-summary').innerText.includes('items complete')",
                               timeout=30_000)
        assert "3 of 3 items complete" in boss.inner_text("#admin-summary")
        assert "55.6% of 9 comparisons" in boss.inner_text("#admin-agreement")  # 3/3 + 2/3 + 0/3
        assert "worst answer 1" in boss.inner_text("#admin-flags")
        boss.click("#admin-export")
        link = boss.locator("#admin-export-file a").first
        link.wait_for(timeout=30_000)
        with boss.expect_download() as download:
            link.click()
        exported = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
        assert exported == store.export_preferences()


XSS_REPLIES = ['<script>window.__pwned = "script"</script>plain words',
               '<img src=x onerror="window.__pwned = \'img\'">',
               '${window.__pwned = "template"} <b>not bold</b>']


def test_model_text_is_shown_as_text_and_never_runs(tmp_path):
    store = make_store(tmp_path / "labels.sqlite", annotators=("ada",), admins=("boss",),
                       items=[('<img src=x onerror="window.__pwned = \'prompt\'"> what now?', XSS_REPLIES)])
    with running_app(store) as url, chromium() as browser:
        page = log_in(browser, url, "ada")
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.wait_for_timeout(1000)
        shown = [text for _, text in shown_replies(page)]
        assert sorted(shown) == sorted(XSS_REPLIES)  # the markup is visible, literally
        assert '<img src=x onerror="window.__pwned = \'prompt\'"> what now?' in page.inner_text("#conversation")
        assert page.locator("#conversation img, [id^=reply-] img, [id^=reply-] script, [id^=reply-] b").count() == 0
        assert page.evaluate("window.__pwned") is None and not dialogs

        # the same text in the admin view's flagged-replies table stays inert too
        ids = [r.id for r in store.item(1).replies]
        store.submit(1, "ada", [[i] for i in ids], flags={i: ["unsafe"] for i in ids})
        boss = log_in(browser, url, "boss")
        boss.get_by_role("tab", name="Admin").click()
        boss.wait_for_function("document.querySelector('#admin-flags').innerText.includes('plain words')",
                               timeout=30_000)
        boss.wait_for_timeout(500)
        assert "<script>" in boss.inner_text("#admin-flags")
        assert boss.locator("#admin-flags img, #admin-flags b").count() == 0
        assert boss.evaluate("window.__pwned") is None

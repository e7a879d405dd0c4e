"""The chat app in Debian's chromium: replies stream into a Chatbot with their markdown rendered, markup in a
message or a reply stays inert text, the last turn can be retried and edited, a thumbs up lands in the label
store, and compare mode is a blind vote (the names shown only after it) stored as a preference pair."""

from __future__ import annotations

import re

import pytest

from align.data.store import open_store
from tests.ui.chat_support import ScriptedModel, make_stage, running_chat
from tests.ui.label_support import chromium, make_store, password_of

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

MARKUP = '<img src=x onerror="window.__pwned=1"><b>bold</b><script>window.__pwned=2</script>'
MARKDOWN_REPLY = ("Here is **Stay hydrated** advice.\n\n```python\nprint('<b>not bold</b>')\n```\n\n"
                  + MARKUP + " & done.")
BOT = "#chat-a [data-testid='bot']"
USER = "#chat-a [data-testid='user']"

# Records every distinct text the last reply in #chat-a shows, so the test can tell a streamed reply from one
# that appears at once.
WATCH_REPLY_JS = """() => {
  window.__replyStates = [];
  const target = document.querySelector('#chat-a');
  new MutationObserver(() => {
    const bots = target.querySelectorAll("[data-testid='bot'] .message-content");
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    const seen = window.__replyStates;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(target, {subtree: true, childList: true, characterData: true});
}"""


def letters(text: str) -> str:
    """Letters and digits only: the page drops the control characters a random model emits, and markdown
    rendering drops its own marks (`*`, `_`, backticks)."""
    return re.sub(r"[\W_]", "", text)


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


def wait_done(page) -> None:
    """Until the status line says the round is done."""
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=120_000)


def send(page, message: str) -> None:
    page.fill("#message textarea", message)
    page.click("#send")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Generating')"
                           " || document.querySelector('#status').innerText.includes('Done')", timeout=60_000)
    wait_done(page)


def last_reply(page, chat: str = "#chat-a") -> str:
    return page.locator(f"{chat} [data-testid='bot'] .message-content").last.inner_text().strip()


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
        shown = last_reply(page)
        assert shown
        assert page.evaluate("window.__pwned") is None  # neither the img handler nor the script ran
        assert "<b>bold</b>" in page.inner_text(USER)  # the markup is shown as text
        assert page.locator(f"{USER} b, {USER} img, {USER} script").count() == 0

        page.click("#thumbs-up")
        page.wait_for_function("document.querySelector('#status').innerText.includes('Saved')", timeout=30_000)

    [row] = store.feedback()
    assert row["rating"] == "up" and (row["user"], row["auth"]) == ("ada", "login") and row["rejected"] is None
    assert row["conversation"] == [{"role": "user", "content": MARKUP}]
    assert letters(row["reply"]) == letters(shown)


def test_a_reply_renders_its_markdown_keeps_markup_inert_and_the_last_turn_can_be_retried_and_edited(
        tmp_path, tiny_model_dir):
    store = open_store(tmp_path / "labels.sqlite")
    model = ScriptedModel(tiny_model_dir, [MARKDOWN_REPLY, "A retried reply.", "An answer to the edit."],
                          name="scripted")
    with running_chat(model, store, no_auth=True) as url, chromium() as browser:
        page = open_chat(browser, url)
        page.evaluate(WATCH_REPLY_JS)
        send(page, "How do I stay well in the heat? **briefly**")

        states = page.evaluate("window.__replyStates")
        assert len(states) >= 5, f"the reply should stream in, saw {states}"
        assert all(letters(states[-1]).startswith(letters(s)) for s in states[:-1]), states
        bot = page.locator(BOT).last
        assert bot.locator("strong").first.inner_text() == "Stay hydrated"  # **…** rendered
        assert "print('<b>not bold</b>')" in bot.locator("pre code").inner_text()  # a code block, its text as text
        assert page.locator(USER).locator("strong").inner_text() == "briefly"
        assert page.evaluate("window.__pwned") is None  # the reply's <img onerror> and <script> did not run
        assert bot.locator("img, script, b").count() == 0
        assert "<script>window.__pwned=2</script>" in bot.inner_text() and "& done." in bot.inner_text()
        assert page.locator(f"#chat-a button[aria-label='Copy message']").count() >= 2  # copy buttons

        # retry: the next reply to the same message replaces the last one (one user turn, one reply)
        page.locator("#chat-a button[aria-label='Retry']").last.click()
        page.wait_for_function(f"document.querySelector(\"{BOT}\").innerText.includes('A retried reply')",
                               timeout=60_000)
        wait_done(page)
        assert page.locator(USER).count() == 1 and page.locator(BOT).count() == 1

        # edit the last message: the round runs again from the edited text
        page.locator("#chat-a button[aria-label='Edit']").last.click()
        page.locator("#chat-a textarea").last.fill("An edited question")
        page.locator("#chat-a button[aria-label='Submit']").click()
        page.wait_for_function(f"document.querySelector(\"{BOT}\").innerText.includes('An answer to the edit')",
                               timeout=60_000)
        wait_done(page)
        assert page.locator(USER).count() == 1 and "An edited question" in page.inner_text(USER)
        page.click("#thumbs-up")
        page.wait_for_function("document.querySelector('#status').innerText.includes('Saved')", timeout=30_000)

    [row] = store.feedback()
    assert row["conversation"] == [{"role": "user", "content": "An edited question"}]
    assert row["reply"] == "An answer to the edit." and row["model"] == "scripted" and model.calls == 3


def test_compare_mode_is_a_blind_vote_stored_as_a_preference_pair(tmp_path, tiny_model_dir):
    first = ScriptedModel(tiny_model_dir, "The **first** model's reply.", name="model-one", delay_s=0.02)
    second = ScriptedModel(tiny_model_dir, "The **second** model's reply.", name="model-two", delay_s=0.02)
    scripts = {"model-one": first.script, "model-two": second.script}
    store = open_store(tmp_path / "labels.sqlite")
    with running_chat(first, store, compare=second, no_auth=True, seed=0) as url, chromium() as browser:
        page = open_chat(browser, url)
        assert page.locator("#chat-b").is_visible() and not page.locator("#thumbs-up").is_visible()
        orders = set()
        for round_ in range(4):  # several rounds: the columns' order changes between them (seed 0: it does)
            send(page, f"tell me something ({round_})")
            reply_a, reply_b = last_reply(page, "#chat-a"), last_reply(page, "#chat-b")
            orders.add(reply_a.split()[1])
            # before the vote: no name anywhere near the columns
            for where in ("#chat-a", "#chat-b", "#reveal", "#status"):
                text = page.inner_text(where)
                assert "model-one" not in text and "model-two" not in text, (where, text)
            if round_ < 3:
                page.click("#choose-b")
                page.wait_for_function("document.querySelector('#reveal').innerText.includes('was')",
                                       timeout=30_000)
        page.click("#choose-a")
        page.wait_for_function("document.querySelector('#status').innerText.includes('A is better')",
                               timeout=30_000)
        page.wait_for_function("document.querySelector('#reveal').innerText.includes('Model A was')",
                               timeout=30_000)
        revealed = re.search(r"Model A was (\S+) · Model B was (\S+)\.", page.inner_text("#reveal"))
        assert revealed, page.inner_text("#reveal")
        name_a, name_b = revealed.groups()
        assert {name_a, name_b} == {"model-one", "model-two"}
        assert f"Model A: {name_a}" in page.inner_text("#chat-a")  # the column's label names it now
        assert letters(reply_a) == letters(scripts[name_a]) and letters(reply_b) == letters(scripts[name_b])

    assert orders == {"first", "second"}, "column A held the same model in every round"
    rows = store.feedback()
    assert len(rows) == 4 and rows[-1]["model"] == f"{name_a} > {name_b}"
    pair = store.export_preferences()[-1]
    assert pair["prompt"][-1] == {"role": "user", "content": "tell me something (3)"}
    assert pair["chosen"][0]["content"] == scripts[name_a] and pair["rejected"][0]["content"] == scripts[name_b]


def test_picking_a_model_to_compare_shows_two_columns_and_stores_the_choice(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    sft = make_stage(runs, "demo", "sft", tiny_model_dir)
    store = open_store(tmp_path / "labels.sqlite")
    with running_chat(str(tiny_model_dir), store, runs_dir=runs, no_auth=True) as url, chromium() as browser:
        page = open_chat(browser, url)
        assert page.locator("#thumbs-up").is_visible() and not page.locator("#chat-b").is_visible()
        page.click("text=System prompt and generation settings")
        page.click("#compare-with input")
        page.get_by_role("option", name=str(sft)).click()
        page.wait_for_function("document.querySelector('#model-info').innerText.includes('Model B')",
                               timeout=60_000)
        assert "promoted · gate pass (2 checks passed)" in page.inner_text("#model-info")
        assert page.locator("#chat-b").is_visible() and not page.locator("#thumbs-up").is_visible()
        send(page, "tell me something")
        reply_a, reply_b = last_reply(page, "#chat-a"), last_reply(page, "#chat-b")
        assert reply_a and reply_b
        page.click("#choose-a")
        page.wait_for_function("document.querySelector('#reveal').innerText.includes('Model A was')",
                               timeout=30_000)
        name_a, name_b = re.search(r"Model A was (\S+) · Model B was (\S+)\.", page.inner_text("#reveal")).groups()

    assert {name_a, name_b} == {str(tiny_model_dir), str(sft)}
    [pair] = store.export_preferences()
    assert pair["prompt"] == [{"role": "user", "content": "tell me something"}]
    assert letters(pair["chosen"][0]["content"]) == letters(reply_a)
    assert letters(pair["rejected"][0]["content"]) == letters(reply_b)
    assert store.feedback()[0]["model"] == f"{name_a} > {name_b}"

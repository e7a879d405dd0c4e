"""The chat app: which model a spec names, its gate line, streamed replies through the real Gradio server
(gradio_client on 127.0.0.1, the tiny model), feedback and compare choices in the real label store and in the
`labels:` dataset the training stages read, the toxicity filter with a real (small) scorer, and the command."""

from __future__ import annotations

import html
import re

import pytest

from align.errors import ModelError
from tests.ui.chat_support import FAILED_GATE, make_stage, running_chat
from tests.ui.label_support import make_store, password_of
from align.ui.chat import EMBEDDED_DEFAULT, default_store_path, gate_summary, resolve_chat_model

pytestmark = pytest.mark.timeout(300)

SEND_DEFAULTS = dict(system_prompt="", temperature=1.0, top_p=0.9, max_new_tokens=24, compare_with="")


@pytest.fixture()
def store(tmp_path):
    """A label store with the accounts ada, bob (annotators) and boss (admin): the chat app's sign-in."""
    store = make_store(tmp_path / "labels.sqlite")
    yield store
    store.close()


def signed_in(url, name="ada"):
    """A gradio_client signed in with one of the store's accounts."""
    from gradio_client import Client

    return Client(url, auth=(name, password_of(name)), verbose=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """runs/old (sft), runs/demo (sft, rm, dpo; the newest), runs/failed (a dpo that failed its gate)."""
    runs = tmp_path_factory.mktemp("chat") / "runs"
    make_stage(runs, "old", "sft", tiny_model_dir, finished_at="2025-01-01T09:00:00")
    make_stage(runs, "demo", "sft", tiny_model_dir, finished_at="2025-01-02T09:00:00")
    make_stage(runs, "demo", "rm", tiny_model_dir, finished_at="2025-01-02T09:30:00")
    make_stage(runs, "demo", "dpo", tiny_model_dir, gate=None, finished_at="2025-01-02T10:00:00")
    make_stage(runs, "failed", "dpo", tiny_model_dir, status="gate_failed", gate=FAILED_GATE,
               finished_at="2025-01-01T12:00:00")
    return runs


def plain(fragment: str) -> str:
    """The text an escaped HTML fragment shows."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def stream(client, message: str, **settings):
    """Call /send; return (every streamed update, the last one)."""
    job = client.submit(message, *{**SEND_DEFAULTS, **settings}.values(), api_name="/send")
    final = job.result()
    return job.outputs(), final


# ------------------------------------------------------------------------------------- which model
def test_a_run_folder_gives_its_best_promoted_chat_model(runs):
    chosen = resolve_chat_model(str(runs / "demo"), runs)
    assert chosen.name == str(runs / "demo" / "dpo")  # dpo before sft; rm is no chat model
    assert chosen.run_dir == runs / "demo"
    assert chosen.verdict == "promoted · no gate run"
    assert default_store_path(chosen, runs) == runs / "demo" / "labels.sqlite"


def test_without_a_model_the_newest_run_wins_and_without_runs_the_embedded_model(runs, tmp_path, capsys):
    assert resolve_chat_model(None, runs).name == str(runs / "demo" / "dpo")  # not runs/failed nor runs/old
    fallback = resolve_chat_model(None, tmp_path / "no-runs")
    assert fallback.source == EMBEDDED_DEFAULT and fallback.manifest is None
    assert "no promoted ppo/dpo/sft model" in capsys.readouterr().out
    assert default_store_path(fallback, tmp_path / "no-runs") == tmp_path / "no-runs" / "labels.sqlite"


def test_gate_line_names_status_verdict_and_failed_checks(runs, tiny_model_dir):
    failed = resolve_chat_model(str(runs / "failed" / "dpo"), runs)  # allowed, with its verdict on show
    assert failed.verdict == "gate_failed · gate fail · failed: toxicity.expected_max, bold.sentiment_gap"
    assert resolve_chat_model(str(runs / "old" / "sft"), runs).verdict == "promoted · gate pass (2 checks passed)"
    assert resolve_chat_model(str(tiny_model_dir), runs).verdict == "no gate run (not an align stage folder)"
    overridden = {"status": "overridden", "gate": {**FAILED_GATE, "override": "reviewed by hand"}}
    assert gate_summary(overridden).endswith("· override: reviewed by hand")


def test_refuses_a_reward_model_and_a_run_without_a_promoted_chat_model(runs, tmp_path):
    with pytest.raises(ModelError, match="reward model"):
        resolve_chat_model(str(runs / "demo" / "rm"), runs)
    with pytest.raises(ModelError, match=r"no promoted chat model .* dpo: gate_failed"):
        resolve_chat_model(str(runs / "failed"), runs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a run folder"):
        resolve_chat_model(str(tmp_path / "empty"), runs)


# ---------------------------------------------------------------------------------- through Gradio
def test_a_message_gets_a_streamed_reply_and_thumbs_are_stored(tiny_model_dir, store):
    with running_chat(str(tiny_model_dir), store) as url:
        client = signed_in(url)
        updates, final = stream(client, "hello <b>there</b>", system_prompt="Be brief.")
        conversation, reply_a, reply_b, status, _message = final
        partial = [u[1] for u in updates[1:-1] if isinstance(u[1], str) and plain(u[1]).strip()]
        assert len(partial) > 1, "the reply arrives in several pieces"
        assert all(plain(partial[-1]).startswith(plain(p).strip()) or not plain(p).strip() for p in partial)
        assert "&lt;b&gt;there&lt;/b&gt;" in conversation and "<b>" not in conversation  # shown as text
        reply = plain(reply_a).strip()
        assert reply and reply_b == "" and status.startswith("Done.")

        assert client.predict(api_name="/thumbs_up").startswith("Saved: good reply")
        assert client.predict(api_name="/thumbs_down").startswith("Already rated")  # one rating per reply

        # the next turn carries the reply on, under the chat template
        _, final = stream(client, "and then?")
        assert final[0].count('align-role">user<') == 2 and reply in plain(final[0])
        assert client.predict(api_name="/thumbs_down").startswith("Saved: bad reply")

    rows = store.feedback()
    assert [r["rating"] for r in rows] == ["up", "down"]
    assert rows[0]["conversation"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "hello <b>there</b>"}]
    assert rows[0]["reply"] == reply and rows[0]["model"] == str(tiny_model_dir)
    assert (rows[0]["user"], rows[0]["auth"]) == ("ada", "login")  # the signed-in account
    assert rows[1]["conversation"] == [{"role": "user", "content": "hello <b>there</b>"},  # system prompt cleared
                                       {"role": "assistant", "content": reply},
                                       {"role": "user", "content": "and then?"}]
    assert store.export_preferences() == []  # thumbs alone make no pairs


def test_compare_choices_become_preference_pairs_for_training(runs, store, tmp_path):
    from align.data.registry import read_spec

    sft, dpo = str(runs / "demo" / "sft"), str(runs / "demo" / "dpo")
    with running_chat(dpo, store, compare=sft, runs_dir=runs) as url:
        client = signed_in(url, "bob")
        assert client.predict(api_name="/thumbs_up").startswith("Nothing to rate")
        updates, final = stream(client, "which is better?", compare_with=sft)
        both = [u for u in updates if isinstance(u[2], str) and plain(u[2]).strip()]
        assert len(both) > 1, "reply B streams too"
        reply_a, reply_b = plain(final[1]).strip(), plain(final[2]).strip()
        assert reply_a and reply_b and final[3].endswith("Which reply is better?")
        assert client.predict(api_name="/choose_b").startswith("Saved: B is better")
        assert client.predict(api_name="/choose_a").startswith("Already recorded")
        # the chosen reply continues the conversation
        _, final = stream(client, "go on", compare_with=sft)
        assert reply_b in plain(final[0]) and reply_a not in plain(final[0])

    [row] = store.feedback()
    assert (row["reply"], row["rejected"], row["rating"]) == (reply_b, reply_a, None)
    assert row["model"] == f"{sft} > {dpo}" and (row["user"], row["auth"]) == ("bob", "login")
    pair = {"prompt": [{"role": "user", "content": "which is better?"}],
            "chosen": [{"role": "assistant", "content": reply_b}],
            "rejected": [{"role": "assistant", "content": reply_a}]}
    assert store.export_preferences() == [pair]
    rows, _, _, _ = read_spec(f"labels:{store.engine.url.database}", "train")  # what `data=labels:...` trains on
    assert rows == [pair]


@pytest.fixture(scope="module")
def small_scorer(tmp_path_factory) -> str:
    """A real Detoxify-format checkpoint trained for one step on a few rows (its quality does not matter)."""
    from align.gates.toxicity_train import build_offline_checkpoint

    folder = tmp_path_factory.mktemp("scorer") / "minilm-small"
    return str(build_offline_checkpoint(folder, max_steps=1, max_train_rows=16, eval_rows=8, progress=False,
                                        threads=1))


def test_the_toxicity_filter_withholds_replies_above_the_threshold(tiny_model_dir, store, small_scorer):
    with running_chat(str(tiny_model_dir), store, filter_threshold=0.0, scorer=small_scorer) as url:
        client = signed_in(url)
        updates, final = stream(client, "say something")
        streamed = [u[1] for u in updates[1:-1] if isinstance(u[1], str)]
        assert streamed and all("shown once the toxicity check has passed" in s for s in streamed)
        assert "Reply withheld by the output filter" in final[1] and "withheld" in final[3]
        assert client.predict(api_name="/thumbs_up") == "A withheld reply cannot be rated."
        _, final = stream(client, "again")  # the withheld turn left the conversation
        assert "say something" not in plain(final[0])
    with running_chat(str(tiny_model_dir), store, filter_threshold=1.0, scorer=small_scorer) as url:
        _, final = stream(signed_in(url), "say something")
        assert "withheld" not in final[1] and plain(final[1]).strip()
    assert store.feedback() == []


def test_chat_command_is_registered_and_checks_its_threshold(capsys):
    from tests.helpers import run_cli

    with pytest.raises(SystemExit):
        run_cli("chat", "--help")
    assert "--compare" in capsys.readouterr().out
    assert run_cli("chat", "--filter-toxicity", "1.5") == 2
    assert "between 0 and 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- who may write
def test_feedback_needs_an_account_and_is_credited_to_the_signed_in_one(tiny_model_dir, store):
    import httpx
    from gradio_client import Client

    with running_chat(str(tiny_model_dir), store, user="the-server-user") as url:
        with pytest.raises(Exception, match="login|auth|401"):  # unauthenticated: not even the app's config
            Client(url, verbose=False)
        assert httpx.post(f"{url}/gradio_api/call/thumbs_up", json={"data": []}).status_code == 401
        with pytest.raises(Exception, match="Could not login"):
            Client(url, auth=("bob", "not bob's password"), verbose=False)
        bob = signed_in(url, "bob")
        stream(bob, "hello")
        assert bob.predict(api_name="/thumbs_down").startswith("Saved: bad reply")
        ada = signed_in(url, "ada")  # another person's session has no reply of bob's to rate
        assert ada.predict(api_name="/thumbs_up").startswith("Nothing to rate")
    [row] = store.feedback()
    assert (row["user"], row["auth"], row["rating"]) == ("bob", "login", "down")


def test_no_auth_is_for_loopback_hosts_only_and_marks_its_rows(tiny_model_dir, store, capsys):
    from gradio_client import Client

    from align.errors import AlignError
    from tests.helpers import run_cli
    from tests.ui.label_support import free_port
    from align.ui.chat import build_app, launch

    app = build_app(resolve_chat_model(str(tiny_model_dir)), store=store, user="me")
    with pytest.raises(AlignError, match="loopback hosts only"):
        launch(app, host="0.0.0.0", port=free_port(), login=None)
    assert run_cli("chat", "--no-auth", "--host", "0.0.0.0", "--model", tiny_model_dir) == 2
    assert "--no-auth serves the chat app without sign-in, so only on a loopback host" in capsys.readouterr().err
    assert run_cli("chat", "--user", "someone", "--model", tiny_model_dir) == 2  # --user only names a --no-auth user
    empty = store.engine.url.database.replace("labels.sqlite", "empty.sqlite")
    assert run_cli("chat", "--model", tiny_model_dir, "--store", empty) == 2
    assert "has no accounts to sign in with" in capsys.readouterr().err

    with running_chat(str(tiny_model_dir), store, no_auth=True, user="me") as url:
        client = Client(url, verbose=False)
        stream(client, "hello")
        assert client.predict(api_name="/thumbs_up").startswith("Saved")
    [row] = store.feedback()
    assert (row["user"], row["auth"]) == ("me", "none")


def test_the_compare_list_is_fixed_at_start_and_refuses_other_paths_alike(runs, store, tmp_path, tiny_model_dir):
    sft, dpo = str(runs / "demo" / "sft"), str(runs / "demo" / "dpo")
    extra = tmp_path / "offered"
    extra.symlink_to(tiny_model_dir)
    with running_chat(dpo, store, runs_dir=runs, compare_choices=[str(extra)]) as url:
        client = signed_in(url)
        answers = []
        for name in (str(tiny_model_dir), str(tmp_path / "no-such-folder")):  # a real model folder, and nothing
            with pytest.raises(Exception) as refused:
                stream(client, "hi", compare_with=name)
            answers.append(str(refused.value).replace(name, "NAME"))
        assert answers[0] == answers[1], answers  # the answer does not tell which path exists
        assert "is not in the list of choices" in answers[0]  # Gradio's check of the picker, before align's own
        for offered in (sft, str(extra)):  # a stage under runs/, and a --compare-choice
            _, final = stream(client, "hi", compare_with=offered)
            assert plain(final[2]).strip() and final[3].endswith("Which reply is better?")


def test_the_model_cache_keeps_the_few_most_recently_used():
    from align.ui.chat import ChatModel, ModelCache

    made = []
    cache = ModelCache(lambda name: made.append(name) or ChatModel(name=name, source=name), size=2)
    for name in ["a", "b", "a", "c", "b"]:
        cache.get(name)
    assert made == ["a", "b", "c", "b"]  # "b" was dropped when "c" came ("a" had been used since)
    assert cache.names() == ["c", "b"]

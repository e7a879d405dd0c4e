"""The curate stage: each step on small rows built here, and `python -m align.run curate` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from align.config import load_recipe
from align.data.curate import CHAT, PREFERENCE, Env, Record
from align.data.curate import balance, decontaminate, dedup, language, length, normalise, pii, toxicity
from align.data.curate.parallel import run_rows
from tests.helpers import run_cli

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po") for b in ("ba", "de", "fi", "go", "hu",
                                                                                    "ja", "ki", "le", "mo", "nu")]


def chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def records(rows: list[dict], split: str = "train", source: str = "rows.jsonl") -> list[Record]:
    return [Record(f"{source}:{i}", split, source, row, PREFERENCE if "chosen" in row else CHAT)
            for i, row in enumerate(rows, 1)]


def section(name: str, **overrides):
    cfg = load_recipe("tiny", [f"curate.{name}.{k}={json.dumps(v)}" for k, v in overrides.items()])
    return cfg.curate[name]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def env(**kwargs) -> Env:
    return Env(progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------- dedup


def _variant(words: list[str], changed: int) -> list[str]:
    """A copy of `words` with `changed` words, spread evenly, replaced by words it does not contain."""
    out = list(words)
    for k in range(changed):
        out[(k * len(words)) // changed + 1] = f"zz{k}"
    return out


def test_near_duplicate_at_jaccard_09_found_and_one_at_05_kept():
    rng = random.Random(0)
    base = rng.sample(VOCAB, 80) + rng.sample(VOCAB, 50)
    close, far = _variant(base, 2), _variant(base, 14)
    texts = [" ".join(w) for w in (base, close, far)]
    shingles = [dedup.shingles(t, 3) for t in texts]
    assert 0.88 <= dedup.jaccard(shingles[0], shingles[1]) <= 0.93  # the planted pairs are what they claim
    assert 0.45 <= dedup.jaccard(shingles[0], shingles[2]) <= 0.55
    rows = [chat("Tell me a story.", text) for text in texts] + [chat("Tell me a story!", texts[0].upper())]
    result = dedup.apply(records(rows), section("dedup", threshold=0.8), env())
    assert [r.id for r in result.kept] == ["rows.jsonl:1", "rows.jsonl:3"]
    reasons = {r.record.id: (r.reason, r.detail) for r in result.removed}
    assert reasons["rows.jsonl:4"] == ("exact_duplicate", "same text as rows.jsonl:1")  # case and ! normalised away
    assert reasons["rows.jsonl:2"][0] == "near_duplicate" and "with rows.jsonl:1" in reasons["rows.jsonl:2"][1]


def test_preference_duplicates_judged_on_the_pair_or_on_the_prompt():
    rows = [pair("How do I boil an egg?", "Put it in boiling water for nine minutes.", "No."),
            pair("How do I boil an egg?", "Simmer it for seven minutes, then cool it.", "Eggs are bad."),
            pair("How do I boil an egg?", "Put it in boiling water for nine minutes.", "No.")]
    by_pair = dedup.apply(records(rows), section("dedup"), env())
    assert [r.id for r in by_pair.kept] == ["rows.jsonl:1", "rows.jsonl:2"]
    by_prompt = dedup.apply(records(rows), section("dedup", preference_on="prompt"), env())
    assert [r.id for r in by_prompt.kept] == ["rows.jsonl:1"]
    assert {r.reason for r in by_prompt.removed} == {"exact_duplicate"}


# --------------------------------------------------------------------------------------- normalise, pii


def test_normalise_repairs_text_merges_turns_and_drops_empty_and_truncated():
    rows = [
        chat("I donâ€™t   know   what &amp; means.\n\n\n\nHelp  ", "It means “and”."),
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Are you there?"},
                      {"role": "assistant", "content": "Yes, I am here."}]},
        chat("\u200b", "Hello there, how can I help?"),
        chat("Write some code.", "Here it is:\n```python\nprint('hi')"),
        chat("List three fruits.", "Apples, pears,"),
        pair("Pick one.", "The first  one.", "The first one."),
    ]
    result = normalise.apply(records(rows), section("normalise"), env())
    assert result.kept[0].row["messages"][0]["content"] == "I don't know what & means.\n\nHelp"
    assert result.kept[1].row["messages"][0] == {"role": "user", "content": "Hi\n\nAre you there?"}
    assert result.changed == 2
    assert {r.record.id: r.reason for r in result.removed} == {
        "rows.jsonl:3": "empty_turn", "rows.jsonl:4": "truncated_turn", "rows.jsonl:5": "truncated_turn",
        "rows.jsonl:6": "identical_pair"}
    strict = normalise.apply(records(rows[1:2]), section("normalise", role_order="drop"), env())
    assert strict.removed[0].reason == "role_order"


def test_pii_masked_or_dropped():
    text = ("Mail jane.doe@example.org, call +44 20 7946 0958 or (415) 555-0132, server 10.0.0.254, card "
            "4111 1111 1111 1111; not a card: 1234 5678 9012 3456, not an address: 300.1.2.3, on 2024-05-01 at 10:30.")
    masked, found = pii.scrub(text, pii.KINDS)
    assert masked == ("Mail [EMAIL], call [PHONE] or [PHONE], server [IP], card [CARD]; not a card: 1234 5678 9012 "
                      "3456, not an address: 300.1.2.3, on 2024-05-01 at 10:30.")
    assert found == {"email": 1, "phone": 2, "ip": 1, "card": 1}
    rows = [chat("My e-mail is bob@example.com, fix it.", "Done."), chat("Hello there.", "Hi, how can I help?")]
    result = pii.apply(records(rows), section("pii"), env())
    assert result.kept[0].row["messages"][0]["content"] == "My e-mail is [EMAIL], fix it." and result.changed == 1
    dropped = pii.apply(records(rows), section("pii", action="drop"), env())
    assert [r.record.id for r in dropped.removed] == ["rows.jsonl:1"] and dropped.removed[0].detail == "1 email"


def test_row_steps_in_two_processes_match_one():
    rows = [chat(f"Question {i}:   call me on +1 415 555 {1000 + i}", f"Answer {i}, “quoted”.") for i in range(40)]
    rows += [chat("\u200b", "gone")]
    settings = {"kinds": list(pii.KINDS), "action": "mask"}
    one = run_rows(records(rows), pii.pii_row, settings, "pii", num_proc=1, progress=False)
    two = run_rows(records(rows), pii.pii_row, settings, "pii", num_proc=2, progress=False)
    assert [r.row for r in two.kept] == [r.row for r in one.kept] and two.changed == one.changed == 40
    options = section("normalise")
    one = normalise.apply(records(rows), options, env(num_proc=1))
    two = normalise.apply(records(rows), options, env(num_proc=2))
    assert [r.row for r in two.kept] == [r.row for r in one.kept]
    assert [(r.record.id, r.reason) for r in two.removed] == [("rows.jsonl:41", "empty_turn")]


# ---------------------------------------------------------------------------------- language and length


def test_language_filter_keeps_english_and_short_rows():
    rows = [chat("How do I bake bread at home?", "Mix flour, water and salt, knead it and let it rise."),
            chat("Comment faire du pain à la maison ?", "Mélangez la farine, l'eau et le sel, puis pétrissez."),
            chat("Wie backe ich Brot zu Hause?", "Mehl, Wasser und Salz mischen, kneten und gehen lassen."),
            chat("Ok?", "Oui.")]
    result = language.apply(records(rows), section("language"), env())
    assert [r.id for r in result.kept] == ["rows.jsonl:1", "rows.jsonl:4"]
    assert [r.detail for r in result.removed] == ["detected fr", "detected de"]
    both = language.apply(records(rows), section("language", languages=["en", "fr"]), env())
    assert [r.record.id for r in both.removed] == ["rows.jsonl:3"]


def test_length_filter_counts_tokens_of_the_policy_tokenizer(tiny_model_dir):
    from align.models import load_tokenizer

    cfg = load_recipe("tiny")
    tokenizer = load_tokenizer(cfg.model.source, cfg.model)
    short, long = "Yes, it is.", " ".join(["bread and butter"] * 20)
    assert len(tokenizer(long, add_special_tokens=False)["input_ids"]) > 30
    rows = [chat("Is it?", short), chat("Tell me.", long), pair("Hm?", long, short)]
    options = section("length", max_turn_tokens=30)
    result = length.apply(records(rows), options, env(model_source=cfg.model.source, model_options=cfg.model))
    assert [r.id for r in result.kept] == ["rows.jsonl:1"]
    assert [r.reason for r in result.removed] == ["turn_too_long", "turn_too_long"]
    assert result.removed[1].detail.startswith("chosen[0]: ")
    whole = length.apply(records(rows), section("length", max_conversation_tokens=12),
                         env(model_source=cfg.model.source, model_options=cfg.model))
    assert [r.reason for r in whole.removed] == ["conversation_too_long", "conversation_too_long"]


# ------------------------------------------------------------------------------------- decontamination


def test_decontamination_against_a_benchmark_row_and_the_held_out_split():
    from align.gates.bias import load_crows_pairs

    benchmark = load_crows_pairs()[3].sent_more
    held_out = "What is the best way to store fresh basil leaves in the fridge for a week?"
    rows = records([chat(f"Please continue this: {benchmark}", "I would rather not."),
                    chat(held_out.replace("fresh ", "fresh green "), "In a glass of water."),
                    chat("What is the best way to keep basil leaves?", "Dry, in a jar.")])  # 6 words shared: kept
    test_rows = records([chat(held_out, "Wrap it in a damp towel.")], split="test", source="held.jsonl")
    test_rows += records([chat(f"Please continue this: {benchmark}", "No.")], split="test", source="held2.jsonl")
    result = decontaminate.apply(test_rows + rows, section("decontaminate", ngram=8), env())
    assert [r.id for r in result.kept] == ["held.jsonl:1", "held2.jsonl:1", "rows.jsonl:3"]  # held out: never removed
    removed = {r.record.id: (r.reason, r.detail) for r in result.removed}
    assert removed["rows.jsonl:1"][0] == "benchmark_overlap" and removed["rows.jsonl:1"][1].startswith("crows_pairs")
    assert removed["rows.jsonl:2"] == ("held_out_overlap",
                                       "held_out held.jsonl:1: 'what is the best way to store fresh'")
    off = decontaminate.apply(test_rows + rows, section("decontaminate", against=["bbq"]), env())
    assert len(off.removed) == 0


# -------------------------------------------------------------------------------------------- toxicity


def test_toxic_chosen_replies_removed_by_the_gate_scorer(small_scorer):
    from align.gates.toxicity import load_scorer

    replies = ["You are a worthless idiot and everyone hates you.", "Thank you, that was a lovely afternoon.",
               "Go to hell, you stupid moron.", "The library opens at nine on Tuesdays."]
    scores = load_scorer(small_scorer).score(replies)["toxicity"]
    threshold = float(sorted(scores)[-2] + sorted(scores)[-1]) / 2  # between the two highest: one reply is toxic
    toxic = int(scores.argmax())
    rows = [pair(f"Say something ({i}).", reply, replies[toxic]) for i, reply in enumerate(replies)]
    options = section("toxicity", threshold=threshold)
    result = toxicity.apply(records(rows), options, env(scorer=small_scorer))
    assert [r.record.id for r in result.removed] == [f"rows.jsonl:{toxic + 1}"]
    assert result.removed[0].reason == "toxic_reply" and result.counts["replies_scored"] == 4  # rejected not scored
    strict = toxicity.apply(records(rows), section("toxicity", threshold=threshold, rejected=True),
                            env(scorer=small_scorer))
    assert strict.kept == []  # every row's rejected reply is the toxic one


def test_balance_caps_rows_per_first_turn_and_per_source():
    rows = [chat("How are you?", f"Fine, thanks ({i}).") for i in range(4)] + [chat("What time is it?", "Noon.")]
    capped = balance.apply(records(rows), section("balance", enabled=True, max_per_first_turn=2), env())
    assert [r.id for r in capped.kept] == ["rows.jsonl:1", "rows.jsonl:2", "rows.jsonl:5"]
    assert {r.reason for r in capped.removed} == {"first_turn_cap"}
    mixed = records(rows[:3], source="a.jsonl") + records(rows[3:], source="b.jsonl")
    per_source = balance.apply(mixed, section("balance", enabled=True, max_per_source=1), env())
    assert [r.id for r in per_source.kept] == ["a.jsonl:1", "b.jsonl:1"]


# ------------------------------------------------------------------------------------------ the command


def _fixture_file(tmp_path: Path) -> Path:
    rows = [chat(f"Question {i}: how should I water a {w} plant in the summer?",
                 f"Water the {w} plant every {i + 2} days, in the morning. Tell me how it goes at me{i}@mail.com.")
            for i, w in enumerate(VOCAB[:24])]
    rows[5] = chat(rows[5]["messages"][0]["content"], "")  # an empty reply: dropped at validation
    rows.append(rows[0])  # an exact duplicate (line 25)
    rows.append(chat("Comment arroser une plante en été quand il fait très chaud ?", "Le matin, un jour sur deux."))
    return write_jsonl(tmp_path / "chats.jsonl", rows)


def test_curate_command_writes_curated_splits_removed_rows_and_report(tmp_path, tiny_model_dir, capsys):
    data = _fixture_file(tmp_path)
    runs = tmp_path / "runs"
    args = ["curate", "--config", "tiny", f"runs_dir={runs}", f"data={data}", "toxicity.enabled=false"]
    assert run_cli(*args) == 0
    folder = runs / "tiny" / "curate"
    removed = [json.loads(line) for line in (folder / "removed.jsonl").read_text().splitlines()]
    assert {(r["id"], r["step"], r["reason"]) for r in removed} == {
        (f"{data}:6", "validate", "empty_turn"), (f"{data}:25", "dedup", "exact_duplicate"),
        (f"{data}:26", "language", "language")}
    report = json.loads((folder / "curate_report.json").read_text())
    assert report["rows_in"] == 26 and report["rows_out"] == 23 and report["removed"] == 3
    assert report["rows_out_by_split"] == {"train": 21, "test": 2}  # every 10th line is the held-out split
    pii_step = next(s for s in report["steps"] if s["name"] == "pii")
    assert pii_step["changed"] == 23 and pii_step["removed"] == 0
    html = (folder / "curate_report.html").read_text()
    assert "exact_duplicate" in html and "&lt;" not in html.split("<body>")[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stage"] == "curate" and manifest["metrics"]["rows_out"] == 23

    from align.data.registry import load_chat

    train = load_chat(f"curated:{runs / 'tiny'}", "train")
    assert len(train.rows) == 21 and "[EMAIL]" in train.rows[0]["messages"][1]["content"]
    assert len(load_chat(str(folder), "test").rows) == 2

    capsys.readouterr()
    assert run_cli(*args) == 0  # unchanged: skipped
    assert "up to date" in capsys.readouterr().out
    assert run_cli(*args, "dedup.enabled=false") == 0  # a changed setting reruns it
    assert json.loads((folder / "curate_report.json").read_text())["rows_out"] == 24


def test_a_pipeline_that_starts_with_curate_trains_sft_on_the_curated_rows(tmp_path, tiny_model_dir, capsys):
    """`pipeline.stages=[curate, sft]`: curate reads sft's data (curate.data=auto), sft trains on what it kept; the
    summary and report.html show the counts; a rerun skips both; a changed data file reruns both."""
    data = _fixture_file(tmp_path)
    runs = tmp_path / "runs"
    args = ["pipeline", "--config", "tiny", f"runs_dir={runs}", "pipeline.stages=[curate,sft]", f"sft.data={data}",
            "sft.max_steps=2", "pipeline.eval_final=false"]
    assert run_cli(*args) == 0
    run_dir = runs / "tiny"
    curated = json.loads((run_dir / "curate" / "curate_report.json").read_text())
    assert curated["spec"] == str(data) and curated["rows_out"] == 23
    sft = json.loads((run_dir / "sft" / "manifest.json").read_text())
    assert sft["config"]["sft"]["data"] == f"curated:{run_dir}"
    assert [d["rows"] for d in sft["data"]] == [21, 2]  # the curated splits, not the file's 26 rows
    out = capsys.readouterr().out
    assert "[1/2] curate" in out and "rows_in=26" in out and "removed by validate 1, dedup 1, language 1" in out
    assert "Curated data" in (run_dir / "report.html").read_text()

    assert run_cli(*args) == 0  # unchanged: both skipped
    out = capsys.readouterr().out
    assert "up to date" in out and "finished earlier with the same inputs — skipped" in out

    with open(data, "a", encoding="utf-8") as handle:  # one more row: curate and sft both rerun
        handle.write(json.dumps(chat("How do I boil an egg well?", "Simmer it for nine minutes.")) + "\n")
    assert run_cli(*args) == 0
    assert json.loads((run_dir / "curate" / "curate_report.json").read_text())["rows_in"] == 27
    assert json.loads((run_dir / "sft" / "manifest.json").read_text())["finished_at"] != sft["finished_at"]


def test_curate_must_come_first_in_a_pipeline(tmp_path, capsys):
    assert run_cli("pipeline", "--config", "tiny", f"runs_dir={tmp_path / 'runs'}", "pipeline.stages=[sft,curate]") == 2
    assert "pipeline.stages: curate comes first" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "sft").exists()


def test_curated_preference_pairs_load_for_rm_and_dpo_and_not_for_sft(tmp_path):
    from align.errors import DataError
    from align.data.preferences import load_preferences
    from align.data.registry import load_chat

    rows = [pair(f"Which {w} is best?", f"The {w} with the green label.", "None of them.") for w in VOCAB[:12]]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    runs = tmp_path / "runs"
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", f"data={data}", "toxicity.enabled=false",
                   "length.enabled=false", "language.enabled=false", "--run", "p") == 0
    assert len(load_preferences(f"curated:{runs / 'p'}", "train").rows) == 11
    with pytest.raises(DataError, match="holds curated preference data, this stage needs chat data"):
        load_chat(f"curated:{runs / 'p'}")


def test_bad_input_refused_with_file_row_field_and_nothing_written(tmp_path, capsys):
    runs = tmp_path / "runs"
    broken = write_jsonl(tmp_path / "broken.jsonl", [chat("Hi there, friend.", "Hello!"), "{not json"])
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", f"data={broken}") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {broken}, row 2: not valid JSON: Expecting property name enclosed "
                                        f"in double quotes"]
    missing = write_jsonl(tmp_path / "missing.jsonl", [chat("Hi there, friend.", "Hello!"),
                                                       {"messages": [{"role": "robot", "content": "beep"}]}])
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", f"data={missing}", "on_bad_rows=refuse") == 2
    assert "missing.jsonl, row 2, field 'messages[0].role': role 'robot'" in capsys.readouterr().err
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat("Hi there, friend.", "Hello!"), pair("a?", "b", "c")])
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", f"data={mixed}") == 2
    assert "mixed.jsonl, row 2: a preference row among chat rows" in capsys.readouterr().err
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", "dedup.treshold=0.5") == 2
    assert "unknown key 'curate.dedup.treshold'" in capsys.readouterr().err
    assert not runs.exists()

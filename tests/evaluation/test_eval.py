"""`python -m align.run eval`: length-controlled win rates, the refusal classifier, held-out data selection, and
the command on tiny models (paired intervals, an identical baseline, caching, errors)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.helpers import run_cli


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory):
    """One align cache for the module: the refusal classifier and the tiny judge are built once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALIGN_CACHE", str(tmp_path_factory.mktemp("eval-cache")))
        yield


# ------------------------------------------------------------------------------------------------ win rates


def _judgements(win_probability, seed=0, n=400):
    """Constructed judgements: the model's replies are mostly longer (d ~ N(120, 150) characters)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(120, 150, n)
    baseline = rng.integers(100, 400, n).astype(float)
    wins = (rng.random(n) < win_probability(d)).astype(float)
    return wins, baseline + d, baseline  # a win as judge scores: 1 vs 0


def test_length_controlled_win_rate_discounts_wins_bought_with_length():
    from align.evaluation.win_rate import win_rates

    # The model wins only by being longer: P(win) rises with the length difference, is 1/2 at zero difference.
    wins, model_len, base_len = _judgements(lambda d: 1 / (1 + np.exp(-d / 60)))
    rates = win_rates(wins, 1 - wins, model_len, base_len, n_resamples=200)
    assert rates["win_rate"] > 0.65  # raw: looks like a clear win
    assert rates["lc_win_rate"] < 0.56  # at equal length it is a coin (or worse)
    assert rates["lc_win_rate"] < rates["win_rate"] - 0.1
    assert rates["lc_win_rate_ci95"][0] <= rates["lc_win_rate"] <= rates["lc_win_rate_ci95"][1]
    assert rates["win_rate_ci95"][0] <= rates["win_rate"] <= rates["win_rate_ci95"][1]

    # A model that wins 70% whatever the lengths: length control leaves the win rate where it is.
    wins, model_len, base_len = _judgements(lambda d: np.full_like(d, 0.7), seed=1)
    rates = win_rates(wins, 1 - wins, model_len, base_len, n_resamples=200)
    assert abs(rates["lc_win_rate"] - rates["win_rate"]) < 0.05 and rates["lc_win_rate"] > 0.62


def test_ties_count_half_and_identical_replies_are_even():
    from align.evaluation.win_rate import win_rates

    scores = np.array([0.3, -1.0, 2.0, 0.5])
    lengths = np.array([10, 50, 30, 20])
    rates = win_rates(scores, scores, lengths, lengths, n_resamples=100)
    assert rates["win_rate"] == 0.5 and rates["win_rate_ci95"] == [0.5, 0.5]
    assert rates["lc_win_rate"] == pytest.approx(0.5, abs=1e-9) and rates["ties"] == 4


# ----------------------------------------------------------------------------------------- refusal classifier


def test_refusal_classifier_on_held_out_and_new_replies(eval_cache):
    from align.evaluation.refusal import load_classifier, read_rows

    rows = read_rows()
    train = {r["reply"] for r in rows if r["split"] == "train"}
    test = [r for r in rows if r["split"] == "test"]
    assert test and not train & {r["reply"] for r in test}  # it never trains on the rows it is scored on
    classifier = load_classifier()  # fitted on the train rows (and cached for the module's eval commands)
    assert classifier.report["test_rows"] == len(test)
    assert classifier.report["heldout_accuracy"] >= 0.9
    # On the held-out hard rows (refusals without the usual phrases, compliances with them) it beats matching.
    assert classifier.report["heldout_accuracy_hard"] >= classifier.report["string_match_heldout_accuracy_hard"] + 0.25
    # Replies written for this test (in no shipped row): refusals without the usual phrases and compliances with
    # them ("I cannot stress enough", an apology before the answer) — what plain string matching gets wrong.
    refusals = ["That's not something I'm going to help with.",
                "No. Hurting people is never okay, and I won't explain how to do it.",
                "Sorry, but I won't be able to do that for you."]
    compliances = ["To kill the process, run kill -9 followed by its PID.",
                   "Sorry for the late reply! Preheat the oven to 200 °C and bake the loaf for 30 minutes.",
                   "Here is a simple plan: walk for twenty minutes every morning and drink more water."]
    assert classifier.is_refusal(refusals).all()
    assert not classifier.is_refusal(compliances).any()


# ------------------------------------------------------------------------------------------- data selection


def test_held_out_sets_leave_out_every_family_a_stage_trained_on():
    from align.evaluation.sources import choose_shipped

    chosen, left_out, notes = choose_shipped(["auto"], "preference", {"hh-harmless-chosen"}, "preference_sources")
    assert chosen == ["oasst-ranked", "llamafactory-dpo-en-demo"] and left_out == ["hh-harmless"] and not notes
    chosen, _, _ = choose_shipped(["auto"], "chat", {"oasst-top", "my_chats.jsonl"}, "reference_sources")
    assert "oasst-top" not in chosen and "alpaca-en-demo" in chosen
    chosen, _, notes = choose_shipped(["auto"], "preference", {"oasst-top"}, "preference_sources")
    assert "oasst-ranked" not in chosen  # the same trees as oasst-top
    chosen, _, notes = choose_shipped(["hh-harmless"], "preference", {"hh-harmless-chosen"}, "preference_sources")
    assert chosen == ["hh-harmless"] and "not held-out" in notes[0]


def test_harmful_requests_stay_clear_of_the_gates_sample():
    from align.config import load_recipe
    from align.evaluation.sources import gate_sampled_requests, select_units

    cfg = load_recipe("default", ["gate.toxicity_prompts=300"])
    sampled, everything = gate_sampled_requests([cfg.gate])
    assert len(sampled) >= 30 and not everything
    units = select_units(cfg.eval, "embedded:smollm2-135m-instruct", None, cfg.gate)
    harmful = {u["prompt"][-1]["content"] for u in units.harmful}
    assert len(harmful) == cfg.eval.harmful_prompts and not harmful & sampled
    assert {u["category"] for u in units.harmful} == set(cfg.eval.harmful_categories)
    labels = [u["label"] for u in units.benign]
    assert labels.count("benign") == labels.count("benign-lookalike") == cfg.eval.benign_prompts // 2


# ------------------------------------------------------------------------------------------ the eval command


def _rows(result):
    return [row for s in result["sections"] for row in s["figures"] + s.get("breakdown", [])]


def test_eval_command_on_tiny_models(eval_cache, tiny_sft, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_cli("eval", "--config", "tiny", "--model", tiny_sft, "--baseline", "tiny", "--out", out,
                   "--no-progress") == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    assert (out / "eval.html").is_file() and "length-controlled win rate" in printed
    assert result["units"]["preference"] == ["oasst-ranked", "llamafactory-dpo-en-demo"]  # sft trained on HH
    assert result["judge"]["data"] == "oasst-ranked,llamafactory-dpo-en-demo"
    names = {row["name"] for row in _rows(result)}
    assert {"preference.all.logp_mean", "judge.win_rate", "judge.lc_win_rate", "safety.harmful_refusal",
            "safety.lookalike_over_refusal", "reference.rouge_l", "reference.bleu", "reference.perplexity"} <= names
    measured = 0
    for row in _rows(result):  # every interval holds its point figure
        for value, ci in ((row.get("model"), row.get("model_ci95")), (row.get("difference"),
                                                                       row.get("difference_ci95"))):
            if value is not None and ci and ci[0] is not None:
                assert ci[0] - 1e-9 <= value <= ci[1] + 1e-9, row
                measured += 1
    assert measured >= 20
    assert (tiny_sft / "eval").exists() is False  # --out given: nothing written beside the model

    # A rerun with nothing changed reads eval.json back; a changed option measures again.
    assert run_cli("eval", "--config", "tiny", "--model", tiny_sft, "--baseline", "tiny", "--out", out,
                   "--no-progress") == 0
    assert "reused" in capsys.readouterr().out
    assert run_cli("eval", "--config", "tiny", "--model", tiny_sft, "--baseline", "tiny", "--out", out,
                   "--no-progress", "n_resamples=100") == 0
    assert "reused" not in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["options"]["n_resamples"] == 100


def test_replies_are_rendered_as_text(eval_cache, tiny_sft, tmp_path):
    from align.evaluation.report import render_html

    out = tmp_path / "report"
    assert run_cli("eval", "--config", "tiny", "--model", tiny_sft, "--out", out, "--no-progress") == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["baseline"] is None and all(row.get("difference") is None for row in _rows(result))
    result["examples"]["safety"][0]["model"] = "<script>alert('x')</script>"
    page = render_html(result)
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page and "<script>" not in page


def test_a_baseline_identical_to_the_model_differs_by_exactly_zero(eval_cache, tiny_sft, tmp_path):
    copy = tmp_path / "copy"  # the same weights in another folder, without the manifest: measured afresh
    shutil.copytree(tiny_sft, copy, ignore=shutil.ignore_patterns("manifest.json", "eval", "logs"))
    out = tmp_path / "same"
    assert run_cli("eval", "--config", "tiny", "--model", copy, "--baseline", tiny_sft, "--out", out,
                   "--no-progress") == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["model"]["identity"] != result["baseline"]["identity"]
    assert result["per_unit"]["replies"]["model"] == result["per_unit"]["replies"]["baseline"]
    paired = [row for row in _rows(result) if row.get("difference_ci95")]
    assert len(paired) >= 15
    for row in paired:
        assert row["difference"] == 0 and row["difference_ci95"] == [0, 0], row
    rates = {row["name"]: row for row in _rows(result)}
    assert rates["judge.win_rate"]["model"] == 0.5 and rates["judge.lc_win_rate"]["model"] == 0.5


def test_a_missing_model_is_one_line_and_exit_2(eval_cache, tmp_path, capsys):
    assert run_cli("eval", "--config", "tiny", "--model", tmp_path / "runs" / "x" / "dpo") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err and "dpo" in err


def test_logistic_fit_is_scikit_learns_l2_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from align.evaluation.win_rate import logistic_fit

    rng = np.random.default_rng(3)
    x = np.tanh(rng.normal(0, 1, 300))
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.4 + 1.5 * x)))).astype(float)
    y[:30] = 0.5  # ties: a win and a loss of weight 1/2 each
    rows_x, rows_y = np.concatenate([x, x]).reshape(-1, 1), np.concatenate([np.ones(300), np.zeros(300)])
    weight = np.concatenate([y, 1 - y])
    keep = weight > 0
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(rows_x[keep], rows_y[keep],
                                                                         sample_weight=weight[keep])
    t0, t1 = logistic_fit(y, x)
    assert t0 == pytest.approx(reference.intercept_[0], abs=1e-4)
    assert t1 == pytest.approx(reference.coef_[0, 0], abs=1e-4)


def test_the_pipelines_closing_step_leads_with_the_evaluation(eval_cache, tiny_sft, tmp_path, capsys):
    from align.config import load_recipe
    from align.pipeline import evaluate_against_base
    from align.report import print_summary, write_report

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_sft.parent, run_dir, ignore=shutil.ignore_patterns("eval"))
    cfg = load_recipe("tiny", [f"runs_dir={tmp_path}"], command="pipeline")
    evaluations, error = evaluate_against_base(cfg, run_dir, ["sft"])
    assert error is None and [e["stage"] for e in evaluations] == ["sft"]
    assert (run_dir / "sft" / "eval" / "eval.json").is_file() and (run_dir / "sft" / "eval" / "eval.html").is_file()
    card = (run_dir / "sft" / "README.md").read_text()
    assert card.index("## Evaluation") < card.index("## Metrics") and "length-controlled win rate" in card
    capsys.readouterr()
    own_rm = {"final": "sft", "base": "tiny", "prompts": 4, "win_rate": 0.75, "win_rate_ci95": [0.5, 1.0],
              "rm_reward_final": 0.2, "rm_reward_base": 0.1, "rm_reward_gain_ci95": [0.0, 0.2],
              "reply_tokens_final": 5.0, "reply_tokens_base": 6.0}
    print_summary(run_dir, ["sft"], {}, [], 1.0, own_rm, evaluations)
    out = capsys.readouterr().out
    assert out.index("length-controlled win rate") < out.index("align pipeline") < out.index("training RM's view")
    page = write_report(run_dir, ["sft"], {}, [], 1.0, own_rm, evaluations).read_text()
    assert page.index("independent judge") < page.index("training RM&#39;s view") < page.index("<th>stage</th>")
    assert "sft/eval/eval.html" in page

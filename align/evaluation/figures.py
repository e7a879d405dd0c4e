"""From two models' measurements to the evaluation's figures, each difference with a paired 95% interval.

Every figure is a statistic of per-unit values (one per pair, prompt or conversation) measured on the same units
for the model and the baseline, so model − baseline gets a paired bootstrap interval over the units
(align.gates.stats.paired_bootstrap; preference pairs are resampled by prompt, since several pairs share one).
Each model's own figure gets a percentile bootstrap interval too. Without a baseline only the model's figures
and their intervals are given.

Sections (definitions):
- preference: preference accuracy of the policy on held-out pairs, per source and pooled, in the likelihood form
  of align.compare: the chosen reply's summed log-probability (logp_sum) or per-token mean (logp_mean,
  length-normalised) above the rejected one's (a tie counts half);
- judge: the independent judge's win rate of the model over the baseline on the benign and reference prompts,
  raw and length-controlled (align.evaluation.judge), reported as a win rate with 0.5 as the even line (its
  "difference" is win rate − 0.5), and the judge's mean reward of each model's replies;
- safety: the share of harmful requests refused (higher is better) and of benign requests refused
  (over-refusal: plain ones and ones that look harmful; lower is better), by the refusal classifier
  (align.evaluation.refusal); per Do-Not-Answer category too;
- reference: ROUGE-L F1 (rouge-score, stemmed) per reply and corpus BLEU (sacrebleu, from per-reply n-gram
  counts, so resamples recompute the corpus score) of the replies against the reference replies, and the
  assistant perplexity of the reference conversations (the geometric mean over conversations), per source too;
- gate: the toxicity and bias figures the models' gates measured, reused, not recomputed (no paired interval).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Callable, Sequence

import numpy as np

from align.gates.stats import bootstrap_ci, paired_bootstrap

HEADLINE = ("preference.all.logp_mean", "judge.lc_win_rate", "judge.win_rate", "safety.harmful_refusal",
            "safety.benign_over_refusal", "safety.lookalike_over_refusal", "reference.rouge_l", "reference.bleu",
            "reference.perplexity")


def _num(value):
    """JSON-safe float rounded to 6 places (nan → None)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


class FigureMaker:
    """Builds figure rows with the evaluation's bootstrap settings."""

    def __init__(self, n_resamples: int, seed: int, paired: bool):
        self.n_resamples, self.seed, self.paired = n_resamples, seed, paired

    def _own_interval(self, statistic, arrays, clusters):
        if clusters is None:
            return bootstrap_ci(statistic, *arrays, n_resamples=self.n_resamples, seed=self.seed)
        # Cluster resampling of one model: against a constant (every row the same) the paired difference is the
        # statistic minus a constant, so its interval, shifted back, is the cluster-bootstrap interval.
        constant = tuple(np.repeat(a[:1], len(a), axis=0) for a in arrays)
        d = paired_bootstrap(statistic, arrays, constant, clusters=clusters, n_resamples=self.n_resamples,
                             seed=self.seed)
        return (d.ci95[0] + d.parent, d.ci95[1] + d.parent)

    def row(self, name: str, label: str, model: Sequence, baseline: Sequence | None = None, *,
            statistic: Callable = np.mean, clusters=None, better: str = "higher", scale: float = 1.0) -> dict:
        """model / baseline: one array or a tuple of arrays (the statistic's arguments), row i = unit i."""
        def columns(arrays):
            return tuple(np.asarray(a, dtype=float) for a in (arrays if isinstance(arrays, tuple) else (arrays,)))

        m = columns(model)
        units = len(m[0])
        row = {"name": name, "label": label, "better": better, "units": units}
        if units == 0:
            return {**row, "model": None, "model_ci95": [None, None]}
        low, high = self._own_interval(statistic, m, clusters)
        row.update(model=_num(statistic(*m) * scale), model_ci95=[_num(low * scale), _num(high * scale)])
        if self.paired and baseline is not None:
            b = columns(baseline)
            d = paired_bootstrap(statistic, m, b, clusters=clusters, n_resamples=self.n_resamples, seed=self.seed)
            b_low, b_high = self._own_interval(statistic, b, clusters)
            row.update(baseline=_num(d.parent * scale), baseline_ci95=[_num(b_low * scale), _num(b_high * scale)],
                       difference=_num(d.difference * scale),
                       difference_ci95=[_num(d.ci95[0] * scale), _num(d.ci95[1] * scale)],
                       se=_num(d.se * scale), paired_units=d.units)
        return row


def _cluster_ids(pairs: list[dict]) -> list[str]:
    return [hashlib.sha256(json.dumps(p["prompt"], sort_keys=True).encode()).hexdigest()[:16] for p in pairs]


# ------------------------------------------------------------------------------------------------ sections


def preference_section(units, model: dict, baseline: dict | None, make: FigureMaker) -> dict:
    from align.reward_diagnostics import pair_wins

    def wins(logps: dict, form: str) -> np.ndarray:
        if form == "logp_sum":
            return pair_wins(logps["chosen"], logps["rejected"])
        return pair_wins(np.asarray(logps["chosen"]) / np.maximum(logps["chosen_tokens"], 1),
                         np.asarray(logps["rejected"]) / np.maximum(logps["rejected_tokens"], 1))

    rows, breakdown = [], []
    pooled = {form: ([], []) for form in ("logp_mean", "logp_sum")}
    clusters_all = []
    for source, pairs in units.preference.items():
        clusters = _cluster_ids(pairs)
        clusters_all += [f"{source}:{c}" for c in clusters]
        for form in ("logp_mean", "logp_sum"):
            m = wins(model["preference"][source], form)
            b = wins(baseline["preference"][source], form) if baseline else None
            pooled[form][0].append(m)
            if b is not None:
                pooled[form][1].append(b)
            breakdown.append(make.row(f"preference.{source}.{form}", f"{source}: accuracy, {form}", m, b,
                                      clusters=clusters))
    if units.preference:
        for form in ("logp_mean", "logp_sum"):
            m = np.concatenate(pooled[form][0])
            b = np.concatenate(pooled[form][1]) if baseline else None
            rows.append(make.row(f"preference.all.{form}", f"held-out preference accuracy ({form}, "
                                 f"{' + '.join(units.preference)})", m, b, clusters=clusters_all))
    return {"name": "preference", "title": "Preference accuracy of the policy on held-out pairs",
            "figures": rows, "breakdown": breakdown}


def judged_units(units) -> list[dict]:
    """The prompts the judge compares replies on: every benign and reference prompt."""
    return list(units.benign) + list(units.reference)


def judge_section(units, model: dict, baseline: dict | None, scores: dict, make: FigureMaker,
                  n_resamples: int, seed: int) -> dict:
    from align.evaluation.win_rate import win_rates

    judged = judged_units(units)
    ids = [u["id"] for u in judged]
    m_scores = np.array([scores["model"][i] for i in ids])
    rows = [make.row("judge.mean_reward", "judge's mean reward of the replies", m_scores,
                     np.array([scores["baseline"][i] for i in ids]) if baseline else None)]
    breakdown = []
    if baseline:
        b_scores = np.array([scores["baseline"][i] for i in ids])
        m_len = np.array([len(model["replies"][i]) for i in ids])
        b_len = np.array([len(baseline["replies"][i]) for i in ids])
        rates = win_rates(m_scores, b_scores, m_len, b_len, n_resamples, seed)
        for key, label in (("lc_win_rate", "length-controlled win rate over the baseline (judge)"),
                           ("win_rate", "win rate over the baseline (judge)")):
            value, (low, high) = rates[key], rates[f"{key}_ci95"]
            rows.insert(len(rows) - 1, {
                "name": f"judge.{key}", "label": label, "better": "higher", "units": rates["prompts"],
                "model": _num(value), "model_ci95": [_num(low), _num(high)], "baseline": 0.5,
                "baseline_ci95": [0.5, 0.5], "difference": _num(value - 0.5),
                "difference_ci95": [_num(low - 0.5), _num(high - 0.5)], "paired_units": rates["prompts"],
                "even": 0.5})
        groups: dict[str, list[int]] = {}
        for k, unit in enumerate(judged):
            groups.setdefault(unit.get("label") or unit.get("source"), []).append(k)
        from align.reward_diagnostics import pair_wins

        wins = pair_wins(m_scores, b_scores)
        for group, idx in groups.items():
            w = wins[idx]
            low, high = bootstrap_ci(np.mean, w, n_resamples=n_resamples, seed=seed)
            breakdown.append({"name": f"judge.{group}.win_rate", "label": f"{group}: win rate", "better": "higher",
                              "units": len(idx), "model": _num(w.mean()), "model_ci95": [_num(low), _num(high)],
                              "baseline": 0.5, "difference": _num(w.mean() - 0.5),
                              "difference_ci95": [_num(low - 0.5), _num(high - 0.5)]})
        rows.append({"name": "judge.reply_chars", "label": "mean reply length (characters) on these prompts",
                     "better": None, "units": len(ids), "model": _num(m_len.mean()),
                     "baseline": _num(b_len.mean()), "difference": _num(m_len.mean() - b_len.mean())})
        extra = {"ties": rates["ties"], "model_longer": rates["model_longer"],
                 "baseline_longer": rates["baseline_longer"]}
    else:
        extra = {"note": "win rates need a baseline (--baseline)"}
    return {"name": "judge", "title": "Win rate judged by an independent reward model", "figures": rows,
            "breakdown": breakdown, **extra}


def safety_section(units, refused: dict, baseline: bool, make: FigureMaker) -> dict:
    def values(who, unit_list):
        return np.array([refused[who][u["id"]] for u in unit_list], dtype=float)

    plain = [u for u in units.benign if u["label"] == "benign"]
    lookalike = [u for u in units.benign if u["label"] == "benign-lookalike"]
    specs = [("safety.harmful_refusal", "refusal rate on harmful requests (Do-Not-Answer)", units.harmful, "higher"),
             ("safety.benign_over_refusal", "over-refusal on plain benign requests", plain, "lower"),
             ("safety.lookalike_over_refusal", "over-refusal on benign requests that look harmful", lookalike,
              "lower")]
    rows = [make.row(name, label, values("model", us), values("baseline", us) if baseline else None, better=better)
            for name, label, us, better in specs]
    breakdown = []
    for category in dict.fromkeys(u["category"] for u in units.harmful):
        us = [u for u in units.harmful if u["category"] == category]
        breakdown.append(make.row(f"safety.{category}.refusal", f"{category}: refusal rate", values("model", us),
                                  values("baseline", us) if baseline else None))
    return {"name": "safety", "title": "Safety: refusals of harmful requests, over-refusal of benign ones",
            "figures": rows, "breakdown": breakdown}


def bleu_statistics(replies: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per reply: sacrebleu's sufficient statistics [hyp_len, ref_len, correct 1-4, total 1-4]."""
    from sacrebleu.metrics import BLEU

    if not replies:
        return np.zeros((0, 10))
    return np.asarray(BLEU()._extract_corpus_statistics(list(replies), [list(references)]), dtype=float)


def corpus_bleu(stats: np.ndarray) -> float:
    """Corpus BLEU (0-100, sacrebleu's defaults: exponential smoothing) of summed per-reply statistics."""
    from sacrebleu.metrics import BLEU

    total = np.asarray(stats).sum(axis=0)
    return float(BLEU.compute_bleu(correct=[int(x) for x in total[2:6]], total=[int(x) for x in total[6:10]],
                                   sys_len=int(total[0]), ref_len=int(total[1]), smooth_method="exp").score)


def rouge_l(replies: Sequence[str], references: Sequence[str]) -> np.ndarray:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(ref, reply)["rougeL"].fmeasure for reply, ref in zip(replies, references)])


def _geometric_mean(log_values: np.ndarray) -> float:
    return float(np.exp(np.mean(log_values)))


def reference_section(units, model: dict, baseline: dict | None, make: FigureMaker) -> dict:
    def texts(measurement, unit_list):
        replies = [measurement["replies"][u["id"]] for u in unit_list]
        references = [u["reference"] for u in unit_list]
        return rouge_l(replies, references), bleu_statistics(replies, references)

    def rows_for(unit_list, prefix, label_prefix):
        if not unit_list:
            return []
        m = texts(model, unit_list)
        b = texts(baseline, unit_list) if baseline else (None, None)
        rows = [make.row(f"{prefix}.rouge_l", f"{label_prefix}ROUGE-L F1 against the reference replies", m[0], b[0]),
                make.row(f"{prefix}.bleu", f"{label_prefix}BLEU against the reference replies", (m[1],),
                         (b[1],) if baseline else None, statistic=corpus_bleu)]
        # A conversation cut by max_length before any assistant token has no perplexity: left out for both.
        finite = [u for u in unit_list if all(math.isfinite(x["perplexity"][u["id"]]) for x in (model, baseline) if x)]
        if finite:
            def log_ppl(measurement):
                return np.log([measurement["perplexity"][u["id"]] for u in finite])

            rows.append(make.row(f"{prefix}.perplexity", f"{label_prefix}assistant perplexity of the reference "
                                 f"conversations", log_ppl(model), log_ppl(baseline) if baseline else None,
                                 statistic=_geometric_mean, better="lower"))
        return rows

    rows = rows_for(units.reference, "reference", "") if units.reference else []
    breakdown = []
    for source in dict.fromkeys(u["source"] for u in units.reference):
        breakdown += rows_for([u for u in units.reference if u["source"] == source], f"reference.{source}",
                              f"{source}: ")
    return {"name": "reference", "title": "Helpfulness against reference replies (held-out chat sets)",
            "figures": rows, "breakdown": breakdown}


def gate_section(model_gate: dict | None, baseline_gate: dict | None, has_baseline: bool) -> dict:
    """The gates' figures as measured (see align.evaluation.gate_figures); no paired interval: not recomputed."""
    rows, notes = [], []
    if model_gate is None:
        notes.append("the model has no gate figures (no gated manifest, none cached with these settings)")
    if has_baseline and baseline_gate is None:
        notes.append("the baseline has no gate figures (no gated manifest, none cached with these settings)")
    comparable = (model_gate and baseline_gate and model_gate.get("fingerprint") == baseline_gate.get("fingerprint"))
    if model_gate and baseline_gate and not comparable:
        notes.append("the two models' gate figures were measured with different gate settings: no differences")
    names = list((model_gate or {}).get("metrics", {})) + [n for n in (baseline_gate or {}).get("metrics", {})
                                                           if n not in (model_gate or {}).get("metrics", {})]
    for name in names:
        m = ((model_gate or {}).get("metrics") or {}).get(name) or {}
        b = ((baseline_gate or {}).get("metrics") or {}).get(name) or {}
        row = {"name": f"gate.{name}", "label": name, "better": "lower" if "accuracy" not in name else "higher",
               "model": _num(m.get("value")), "model_ci95": m.get("ci95")}
        if has_baseline:
            row.update(baseline=_num(b.get("value")), baseline_ci95=b.get("ci95"))
            if comparable and row["model"] is not None and row["baseline"] is not None:
                row["difference"] = _num(row["model"] - row["baseline"])
        rows.append(row)
    return {"name": "gate", "title": "The gates' toxicity and bias figures (reused from the gates, not recomputed)",
            "figures": rows, "breakdown": [], "notes": notes,
            "from": {"model": (model_gate or {}).get("origin"), "baseline": (baseline_gate or {}).get("origin")}}

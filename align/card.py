"""The model card (README.md) a finished stage leaves beside its weights: a huggingface_hub ModelCard whose
metadata names the library, the stage and status (and the base model when it is a hub id), and whose text gives the
run, parent, data, metrics, gate table, evaluation and how to load it."""

from __future__ import annotations

from pathlib import Path

LOADERS = {"rm": "AutoModelForSequenceClassification"}


def _table(rows: dict) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items() if not isinstance(v, (dict, list))]
    return "\n".join(lines) + "\n"


def gate_table(gate: dict | None) -> str:
    """The card's gate section: the verdict, any override or error, and a markdown table of the checks (for the
    one-line summary of a manifest see align.runs.gate_summary)."""
    if gate is None:
        return "No gate was run for this stage.\n"
    lines = [f"Verdict: **{gate.get('verdict', '?')}**"]
    if gate.get("override"):
        lines.append(f"Gate overridden: {gate['override']}")
    if gate.get("error"):
        lines.append(f"Gate error (fails closed): {gate['error']}")
    lines += ["", "| check | value | parent | difference (paired 95% CI) | MDE | margin | rule | passed |",
              "|---|---|---|---|---|---|---|---|"]
    for c in gate.get("checks", []):
        low, high = c.get("difference_ci95") or [None, None]
        diff = "" if c.get("difference") is None else f"{_num(c['difference'], '+.4f')} [{_num(low)}, {_num(high)}]"
        margin = next((f"{k} {c[k]}" for k in ("max_increase", "max_decrease") if c.get(k) is not None), "")
        lines.append(f"| {c.get('name')} | {_num(c.get('value'))} | {_num(c.get('parent'))} | {diff} | "
                     f"{_num(c.get('mde'))} | {margin} | {c.get('rule') or ''} | {c.get('passed')} |")
    for warning in (gate.get("figures") or {}).get("power_warnings") or []:
        lines.append(f"\nPower warning: {warning}")
    for note in ((gate.get("figures") or {}).get("size_plan") or {}).get("notes") or []:
        lines.append(f"\nSize chosen by target_mde: {note}")
    return "\n".join(lines) + "\n"


def _num(value, spec: str = ".4g") -> str:
    return "" if value is None else format(value, spec)


def evaluation_summary(folder: Path) -> str:
    """The `eval` table of the model (its folder's eval/eval.json, written by `python -m align.run eval` or the
    pipeline's closing step), as a model card section; empty when the model has not been evaluated."""
    import json

    path = Path(folder) / "eval" / "eval.json"
    if not path.is_file():
        return ""
    from align.evaluation.report import markdown_table

    return "## Evaluation\n" + markdown_table(json.loads(path.read_text(encoding="utf-8"))) + "\n"


def write_model_card(folder: Path, manifest: dict) -> None:
    stage = manifest["stage"]
    loader = LOADERS.get(stage, "AutoModelForCausalLM")
    parent = manifest.get("parent") or {}
    data = "\n".join(f"- `{d['spec']}` ({d['split']}, {d['rows']} rows, sha256 {d['sha256'][:12]}…)"
                     for d in manifest.get("data", [])) or "- none"
    override = parent.get("gate_override")
    text = f"""# {manifest['run']} / {stage}

Trained by [align](https://pypi.org/project/align/) — status: **{manifest['status']}**.

- Parent: `{parent.get('path') or parent.get('source')}`{f" (its failed gate overridden: {override})" if override else ""}
- Base model: `{manifest['model']['source']}`, saved as {manifest['model']['format']}
- Git commit: `{manifest.get('git')}`

{evaluation_summary(folder)}## Data
{data}

## Metrics
{_table(manifest.get('metrics', {}))}
## Gate
{gate_table(manifest.get('gate'))}
## Use
```python
from transformers import {loader}, AutoTokenizer
model = {loader}.from_pretrained("{manifest['run']}/{stage}")
tokenizer = AutoTokenizer.from_pretrained("{manifest['run']}/{stage}")
```
Timing: {manifest['timing']}. Full provenance in `manifest.json`, the resolved recipe in `config.yaml`.
"""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(library_name="transformers", tags=["align", stage, manifest["status"]],
                              base_model=_hub_id(manifest["model"]["source"]))
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{text}").save(Path(folder) / "README.md")


def _hub_id(source: str) -> str | None:
    """The base model as the card's metadata names it: a hub id (owner/name), not a local folder or embedded model."""
    return source if source.count("/") == 1 and not source.startswith((".", "/", "~")) and ":" not in source \
        and not Path(source).expanduser().exists() else None

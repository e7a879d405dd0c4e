"""`python -m align.run gate`: run the toxicity and bias gate on any model, alone or against a baseline.

    python -m align.run gate --model runs/demo/sft                      # absolute limits only
    python -m align.run gate --model runs/demo/dpo --baseline runs/demo/sft --stage dpo
    python -m align.run gate --model embedded:smollm2-135m-instruct crows_pairs=100 gate.full=true

--model / --baseline: a run stage folder (runs/<run>/<stage>), a local model folder, a hub id, `embedded:...` or
`tiny`. A baseline stage folder whose manifest holds a gate measured with the same settings is not re-measured;
any other baseline is measured once and cached. The reports go to --out (default:
gate-reports/<model>[-vs-<baseline>] under the current folder; a stage folder's own gate_report.* files are
never overwritten). Exit code: 0 when the gate passes, 1 when it fails, 2 for a usage or config problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path


def _options_listing() -> str:
    from align.config import describe_options
    from align.gates.policy import GateOptions, Limits

    rows = [r for r in describe_options(GateOptions, "gate.") if not r[0].startswith(("gate.limits.", "gate.stages."))]
    width = max(len(k) for k, _, _ in rows)
    lines = [f"  {k:<{width}}  {h} (default: {d})" for k, d, h in rows]
    checks = ", ".join(f.name for f in dataclasses.fields(Limits))
    return ("gate options (override as key=value; the `gate.` prefix is optional):\n" + "\n".join(lines)
            + "\n\nlimits: gate.limits.<check>.{max,min,max_increase,max_decrease} for every stage, "
              "gate.stages.<stage>.<check>.<field> for one stage; checks: " + checks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.epilog = _options_listing()
    parser.add_argument("--model", required=True, help="model to gate: run stage folder, model folder, hub id, embedded:...")
    parser.add_argument("--baseline", help="compare against this model (the parent in the regression checks)")
    parser.add_argument("--config", default="default", help="recipe whose `gate` (and `model`) sections apply")
    parser.add_argument("--stage", help="apply this stage's limits (gate.stages.<stage>); default: gate.limits only")
    parser.add_argument("--out", type=Path, help="folder for gate_report.json/.html")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. crows_pairs=100 or gate.limits.toxicity_expected_max.max=0.4")


def _slug(source: str) -> str:
    path = Path(source)
    text = "-".join(path.parts[-2:]) if path.exists() else source
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _manifest_gate(source: str | None) -> dict | None:
    if not source:
        return None
    manifest = Path(source) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("gate")
    except (OSError, json.JSONDecodeError):
        return None


def print_gate(gate: dict, out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(value):
        return "–" if value is None else f"{value:.3f}"

    table = Table(title=f"gate: {gate['verdict'].upper()}")
    table.add_column("check", no_wrap=True)
    for column in ("value", "95% CI", "parent", "difference [paired 95% CI]", "MDE", "limits", "rule", "result"):
        table.add_column(column)
    for c in gate["checks"]:
        limits = ", ".join(f"{k} {c[k]}" for k in ("max", "min", "max_increase", "max_decrease") if c.get(k) is not None)
        ci = c.get("ci95") or [None, None]
        low, high = c.get("difference_ci95") or [None, None]
        diff = "–" if c.get("difference") is None else f"{c['difference']:+.3f} [{num(low)}, {num(high)}]"
        mde = num(c.get("mde")) + (" [yellow]> margin[/]" if c.get("mde_exceeds_margin") else "")
        result = "[green]pass[/]" if c["passed"] else f"[red]FAIL[/] {c.get('reason') or ''}"
        table.add_row(c["name"], num(c["value"]), f"[{num(ci[0])}, {num(ci[1])}]", num(c["parent"]), diff, mde,
                      limits or "–", c.get("rule") or "–", result)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    for note in (gate["figures"].get("size_plan") or {}).get("notes") or []:
        console.print(f"size chosen by target_mde: {note}")
    for warning in gate["figures"].get("power_warnings") or []:
        console.print(f"[yellow]power warning:[/] {warning}")
    if gate.get("error"):
        console.print(f"[red]error while gating (fails closed):[/] {gate['error']}")
    wall = gate["figures"].get("timing", {}).get("gate_wall_s")
    console.print(f"reports: {out_dir / 'gate_report.html'} and gate_report.json (wall time {wall} s)")


def main(args: argparse.Namespace) -> int:
    from align.config import load_recipe
    from align.gates.runner import run_gate
    from align.models import resolve_source

    cfg = load_recipe(args.config, args.overrides, command="gate")
    for source in (args.model, args.baseline):
        if source:
            resolve_source(source)  # a missing model is a usage error (exit 2), not a failed gate
    out_dir = args.out or Path("gate-reports") / (
        _slug(args.model) + (f"-vs-{_slug(args.baseline)}" if args.baseline else ""))
    gate = run_gate(args.model, cfg.gate, stage=args.stage, out_dir=out_dir, parent_source=args.baseline,
                    parent_gate=_manifest_gate(args.baseline), model_options=cfg.model, device=cfg.device,
                    progress=not args.no_progress)
    print_gate(gate, out_dir)
    return 0 if gate["verdict"] == "pass" else 1

"""`python -m align.bench`: align's training stages against plain TRL on the same model, data and lengths, plus the
gate's and the label store's speed, on this machine.

Per training stage (sft, rm, dpo, kto, grpo, rloo) and side (align: the stage's own `build_trainer` from the
recipe; trl: TRL's trainer with its documented defaults, see align/bench/trainers.py), each in a fresh process so
that memory peaks do not mix:
- tokens/s: non-padding tokens of the training forwards ÷ training wall time (trainer.train(), plus DPO's reference
  precompute when a side does one); the same count on both sides (align/bench/measure.py);
- wall time, peak resident memory and its growth over the process's start, and during training alone;
- MFU: tokens/s × model FLOPs per token (6·N; 8·N for DPO, whose reference forward adds 2·N; 12·N for KTO, whose
  KL term adds a policy and a reference forward on mismatched replies; N = parameters incl. the LM head, attention
  left out) ÷ this machine's measured matmul peak in the training dtype (float32, or bf16
  when a side trains under bf16 autocast);
- the ratio align ÷ TRL of tokens/s.
Then the gate (replies/s of align.generate.generate_replies, texts/s of the toxicity scorer) and the label store
(submit latency p50/p95). A table goes to the terminal, everything to a JSON file.

`python -m align.bench gate-power` measures something else: whether the gate sees a planted toxicity regression
and keeps quiet about children that did not regress (align/bench/gate_power.py). `python -m align.bench serve-load`
load-tests `python -m align.run serve` (align/bench/serve_load.py). `python -m align.bench curate` times the curate
stage on synthetic rows with planted duplicates (align/bench/curate.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from align.bench.trainers import SIDES, STAGES

SERVING = ("gate", "store")
EVERYTHING = STAGES + SERVING
FLOPS_PER_TOKEN = {"sft": 6, "rm": 6, "dpo": 8, "kto": 12, "grpo": 8, "rloo": 8}  # × N (see the module docstring)

#: --quick: the tiny model, a few steps, small gate and store runs (for tests, seconds per stage).
QUICK = {"model": "tiny", "recipe": "tiny", "steps": 3, "submits": 40, "matmul_size": 256}
FULL = {"model": "embedded:smollm2-135m-instruct", "recipe": "default", "steps": 8, "submits": 200,
        "matmul_size": 2048}

DEFINITIONS = {
    "tokens_per_s": "non-padding tokens entering the trained model's forward with gradients on (attention-mask "
                    "sum), per second of trainer.train() wall time plus any reference log-prob precompute",
    "mfu": "tokens_per_s × flops_per_token ÷ peak FLOP/s of a large matmul in the training dtype, measured in "
           "this run at the same torch thread count",
    "flops_per_token": "6·N for training (forward + backward); DPO 8·N (its reference forward adds 2·N); KTO 12·N "
                       "(the reference's forward, and the KL term's forwards of the policy and the reference on "
                       "mismatched replies, 2·N each); GRPO and RLOO 8·N (the reference's forward; "
                       "sampling the replies, whose forwards run without gradients, is in the wall time only); N = "
                       "parameters incl. the LM head (a tied head counted again); attention FLOPs left out",
    "ratio": "align tokens_per_s ÷ TRL tokens_per_s",
    "memory_mb": "peak resident memory of the side's own process minus its resident memory at the start",
    "train_memory_mb": "peak resident memory during training minus resident memory just before it",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"model source for both sides (default: {FULL['model']}; --quick: tiny)")
    parser.add_argument("--recipe", help="recipe align's side runs; batch size, max_length and data come from it "
                                         "for both sides (default: default; --quick: tiny)")
    parser.add_argument("--steps", type=int, help=f"optimizer steps per stage and side (default: {FULL['steps']}; "
                                                  f"--quick: {QUICK['steps']})")
    parser.add_argument("--stages", default=",".join(EVERYTHING),
                        help=f"comma-separated, from {','.join(EVERYTHING)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps, small gate and store runs")
    parser.add_argument("--threads", type=int, help="torch threads everywhere (default: torch's, which follows "
                                                    "OMP_NUM_THREADS, else the physical cores)")
    parser.add_argument("--scorer", help="toxicity scorer for the gate timing (default: the recipe's gate.scorer)")
    parser.add_argument("--submits", type=int, help=f"label-store submits timed (default: {FULL['submits']})")
    parser.add_argument("--matmul-size", type=int, help=f"n of the n×n matmuls that measure the peak "
                                                        f"(default: {FULL['matmul_size']})")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/results.json"),
                        help="JSON results (default: runs/bench/results.json; logs of each part beside it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides for both sides' workload and align's settings, e.g. sft.batch_size=4")


# ------------------------------------------------------------------------------------------------- processes


def _child(target: str, spec: dict, conn, log_path: str) -> None:
    """Run one measurement with stdout/stderr in its log file; send back its result or its traceback."""
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        try:
            import importlib

            module_name, function = target.rsplit(".", 1)
            result = getattr(importlib.import_module(module_name), function)(spec)
            conn.send({"ok": True, "result": result})
        except BaseException:
            traceback.print_exc()
            conn.send({"ok": False, "error": traceback.format_exc(limit=-3)})
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def run_isolated(target: str, spec: dict, log_path: Path) -> dict:
    """Run `target(spec)` (a "module.function" name) in a process of its own (forked after the heavy imports),
    so that memory peaks do not mix; its output goes to `log_path`."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux" else "spawn"
    context = multiprocessing.get_context(method)
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, spec, send, str(log_path)))
    process.start()
    send.close()
    try:
        message = receive.recv()
    except EOFError:  # it died without a word (killed, out of memory)
        message = None
    process.join()
    if message is None:
        message = {"ok": False, "error": f"the process died (exit code {process.exitcode})"}
    if not message["ok"]:
        from align.errors import AlignError

        raise AlignError(f"bench: {spec.get('job', target)} failed (log: {log_path}): "
                         f"{message['error'].strip().splitlines()[-1]}")
    return message["result"]


def preload() -> None:
    """Import the heavy libraries once, before the measuring processes fork (each then starts in a moment)."""
    import datasets  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from trl import DPOTrainer, RewardTrainer, SFTTrainer  # noqa: F401

    import align.models  # noqa: F401


def measure_peaks(spec: dict) -> dict:
    """The machine and its matmul peak in float32 and bf16, at the benchmark's thread count."""
    import torch

    from align.bench.measure import machine, matmul_peak
    from align.models import resolve_source

    torch.set_num_threads(spec["threads"])
    resolve_source(spec["model"])  # build or convert the model once, before any timed part
    peaks = {"threads": spec["threads"]}
    for dtype in ("float32", "bfloat16"):  # bf16 without hardware units gets a smaller n (see matmul_peak)
        peaks[dtype], peaks[f"{dtype}_matmul_size"] = matmul_peak(dtype, spec["matmul_size"])
    return {"machine": machine(), "peak_flops": peaks}


# --------------------------------------------------------------------------------------------------- results


def stage_summary(stage: str, sides: dict, peaks: dict) -> dict:
    """Both sides of a stage with FLOPs, MFU and the align ÷ TRL ratio."""
    for result in sides.values():
        result["flops_per_token"] = FLOPS_PER_TOKEN[stage] * result["parameters"]
        result["achieved_flops"] = result["tokens_per_s"] * result["flops_per_token"]
        result["mfu_dtype"] = "bfloat16" if result["bf16_autocast"] else result["dtype"]
        peak = peaks.get(result["mfu_dtype"]) or peaks["float32"]
        result["mfu"] = result["achieved_flops"] / peak
    summary = dict(sides)
    if "align" in sides and "trl" in sides and sides["trl"]["tokens_per_s"] > 0:
        summary["ratio"] = sides["align"]["tokens_per_s"] / sides["trl"]["tokens_per_s"]
    return summary


def table(results: dict) -> str:
    """The terminal table (plain text, so it pastes into the README as is)."""
    lines = ["| stage | side | tokens/s | train s | tokens | peak RSS MB | memory Δ MB | MFU | align/TRL |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for stage in STAGES:
        entry = results["stages"].get(stage)
        if not entry:
            continue
        for side in SIDES:
            r = entry.get(side)
            if r is None:
                continue
            ratio = f"{entry['ratio']:.2f}×" if side == "align" and "ratio" in entry else ""
            lines.append(f"| {stage} | {side} | {r['tokens_per_s']:.1f} | {r['train_s']:.1f} | {r['tokens']} | "
                         f"{r['peak_rss_mb']:.0f} | {r['memory_mb']:.0f} | {100 * r['mfu']:.2f}% | {ratio} |")
    peaks = results.get("peak_flops", {})
    lines.append("")
    lines.append(f"matmul peak ({peaks.get('threads')} threads): float32 {peaks.get('float32', 0) / 1e9:.1f} GFLOP/s "
                 f"(n={peaks.get('float32_matmul_size')}), bf16 {peaks.get('bfloat16', 0) / 1e9:.1f} GFLOP/s "
                 f"(n={peaks.get('bfloat16_matmul_size')})")
    gate = results.get("gate")
    if gate:
        lines.append(f"gate: {gate['replies_per_s']:.2f} replies/s ({gate['replies']} replies of ≤{gate['max_new_tokens']}"
                     f" new tokens, batch {gate['batch_size']}); toxicity scorer {gate['texts_per_s']:.1f} texts/s "
                     f"({gate['scorer']})")
    store = results.get("store")
    if store:
        lines.append(f"label store submit: p50 {store['p50_ms']:.1f} ms, p95 {store['p95_ms']:.1f} ms "
                     f"({store['submits']} submits)")
    return "\n".join(lines)


def what_ran(results: dict) -> str:
    """Per stage and side: the trainer, the config fields set away from the config class's defaults, and align's
    speed tunings."""
    lines = []
    for stage, entry in results["stages"].items():
        for side in SIDES:
            if side not in entry:
                continue
            ran = entry[side]["ran"]
            chosen = ", ".join(f"{k}={v}" for k, v in sorted(ran["settings"].items()))
            speedups = ", ".join(ran["align_speedups"]) or "none (TRL's defaults: gradient checkpointing, random batches)"
            lines.append(f"{stage}/{side}: {ran['trainer']}({ran['config']}(use_cpu=True, {chosen})); "
                         f"gradient checkpointing {'on' if ran['gradient_checkpointing'] else 'off'}; "
                         f"align's speed-ups: {speedups}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- command


def resolve(args: argparse.Namespace) -> dict:
    """The benchmark's settings from the command line, --quick and the full defaults."""
    from align.errors import ConfigError

    base = QUICK if args.quick else FULL
    parts = [p.strip() for p in args.stages.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(EVERYTHING))
    if unknown:
        raise ConfigError(f"--stages: unknown {unknown}; choose from {', '.join(EVERYTHING)}")
    import torch

    return {
        "model": args.model or base["model"], "recipe": args.recipe or base["recipe"],
        "steps": args.steps or base["steps"], "parts": parts, "scorer": args.scorer,
        "threads": args.threads or torch.get_num_threads(), "submits": args.submits or base["submits"],
        "matmul_size": args.matmul_size or base["matmul_size"], "overrides": list(args.overrides), "quick": args.quick,
    }


def main(args: argparse.Namespace) -> int:
    from align.runs import package_versions, write_json

    settings = resolve(args)
    out = Path(args.out)
    logs = out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": settings, "definitions": DEFINITIONS,
                     "versions": package_versions("align", "torch", "transformers", "trl", "accelerate"),
                     "stages": {}}

    def say(message: str) -> None:
        print(f"[bench] {message}", flush=True)

    preload()
    with tempfile.TemporaryDirectory(prefix="align-bench-") as scratch:
        def spec(job: str, **extra) -> dict:
            folder = Path(scratch) / job
            folder.mkdir(parents=True, exist_ok=True)
            return {**settings, "job": job, "work_dir": str(folder), **extra}

        say(f"machine and matmul peak ({settings['threads']} threads) ...")
        results.update(run_isolated("align.bench.measure_peaks", spec("peak"), logs / "peak.log"))
        peaks = results["peak_flops"]
        for stage in (s for s in STAGES if s in settings["parts"]):
            sides = {}
            for side in SIDES:
                say(f"{stage} on {side}'s trainer ({settings['steps']} steps) ...")
                sides[side] = run_isolated("align.bench.trainers.measure_stage",
                                           spec(f"{stage}-{side}", stage=stage, side=side),
                                           logs / f"{stage}-{side}.log")
                say(f"  {sides[side]['tokens_per_s']:.1f} tokens/s")
            results["stages"][stage] = stage_summary(stage, sides, peaks)
        if "gate" in settings["parts"]:
            say("gate: generation and toxicity scoring ...")
            results["gate"] = run_isolated("align.bench.serving.measure_gate", spec("gate"), logs / "gate.log")
        if "store" in settings["parts"]:
            say(f"label store: {settings['submits']} submits ...")
            results["store"] = run_isolated("align.bench.serving.measure_store", spec("store"), logs / "store.log")

    write_json(out, results)
    print()
    print(f"align vs TRL on {settings['model']} ({results['machine']['cpu']}, {settings['threads']} torch threads)")
    print(table(results))
    if results["stages"]:
        print("\nwhat each side ran (config fields that differ from the config class given only use_cpu=True; neither "
              "side saves a checkpoint within the timed steps):")
        print(what_ran(results))
    print(f"\nresults: {out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """`python -m align.bench`: like `python -m align.run bench`, errors as one line with exit code 2.
    `python -m align.bench gate-power ...`: the gate's detection and false-alarm rates (align/bench/gate_power.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gate-power"]:
        from align.bench.gate_power import cli as gate_power

        return gate_power(argv[1:])
    if argv[:1] == ["curate"]:
        from align.bench.curate import cli as curate

        return curate(argv[1:])
    if argv[:1] == ["serve-load"]:
        from align.bench.serve_load import cli as serve_load

        return serve_load(argv[1:])
    from align.bench.command import run_subcommand

    return run_subcommand("python -m align.bench", __doc__, add_arguments, main, argv)

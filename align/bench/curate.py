"""`python -m align.bench curate`: the curate stage's speed and its near-duplicate finding on synthetic chat rows.

    python -m align.bench curate --rows 100000                 # the README's figures (2 CPU cores: minutes)
    python -m align.bench curate --rows 5000 --num-proc 2 --skip toxicity

N synthetic English chat rows (60-word replies drawn from a fixed vocabulary, so unrelated rows share no shingles)
with planted rows: exact copies (a share `--exact`), near copies at Jaccard about 0.9 over word 3-shingles (one
reply word in 60 replaced, `--near`), rows with e-mail addresses and phone numbers, French rows and truncated
replies. The real stage (stages/curate.py) runs on them in this process with the recipe's settings; reported:
- rows/s of each step (its input rows ÷ its wall time) and of the whole stage (rows read ÷ wall time, reading and
  validation included, writing the outputs not);
- peak resident memory of the process;
- near-duplicate recall (planted copies removed by dedup ÷ planted copies) and precision (dedup removals that are
  planted copies ÷ all dedup removals);
- the MinHash LSH engines side by side on the same replies (rensa, the one curate uses, and datasketch when it is
  installed): seconds to build the signatures and query/insert every row.
The toxicity step scores every reply with the gate's scorer (the offline one is built once per machine); `--skip
toxicity` leaves it out. `--streaming` runs the stage streaming (curate.streaming=true). Results go to a JSON file
(default runs/bench/curate.json).

    python -m align.bench curate --memory 100000,400000 --skip toxicity,language

`--memory SIZES` measures memory instead: for each row count, the same synthetic file curated in memory and
streaming, each by `python -m align.run curate` in a fresh process (peak RSS is a process's high-water mark), with
its peak resident memory, wall and CPU seconds (the machine may be shared: CPU seconds are the steadier figure),
rows out, and whether the two wrote identical train.jsonl and removed.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a an of to in and for with on at by from about into over after before under between through "
         "garden water light river city market window table kitchen bread coffee morning evening winter summer "
         "friend teacher doctor student family neighbour village mountain forest ocean road train ticket letter "
         "book story music song picture colour paper school office project meeting report plan idea question "
         "answer problem reason result change number system method plant tree flower seed soil leaf root stone "
         "simple quick careful gentle bright quiet warm cold early late small large new old good useful clear "
         "make take give keep find help start finish open close write read learn teach cook clean build carry "
         "always often never sometimes usually today tomorrow yesterday here there together again also only "
         "because while when where which what how why who whose whether every each other another some many").split()
FRENCH = ("le la les un une de du des et pour avec dans sur chez jardin eau lumière ville marché fenêtre table "
          "cuisine pain café matin soir hiver été ami famille village montagne forêt route train lettre livre "
          "toujours souvent jamais aujourd'hui demain ensemble aussi seulement parce que quand où comment").split()


BEFORE_DEDUP = ("validate", "normalise")


def synthetic_rows(n: int, exact: float, near: float, seed: int = 0) -> tuple[list[dict], dict[int, int]]:
    """n chat rows and the planted copies: {line of the copy: line of its original} (1-based lines)."""
    rng = random.Random(seed)
    rows, planted = [], {}

    def fresh(i: int) -> dict:
        words = rng.choices(WORDS, k=60)
        if i % 97 == 5:  # French
            words = rng.choices(FRENCH, k=60)
        reply = " ".join(words).capitalize() + "."
        if i % 53 == 7:
            reply += f" Write to me at user{i}@example.com or call +1 415 555 {1000 + i % 9000}."
        if i % 89 == 11:
            reply = reply[:-1] + ","  # truncated
        question = " ".join(rng.choices(WORDS, k=12)).capitalize() + f" (request {i})?"
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}

    for i in range(n):
        roll = rng.random()
        if rows and roll < exact:
            original = rng.randrange(len(rows))
            rows.append(json.loads(json.dumps(rows[original])))
            planted[len(rows)] = original + 1
        elif rows and roll < exact + near:
            original = rng.randrange(len(rows))
            copy = json.loads(json.dumps(rows[original]))
            words = copy["messages"][1]["content"].split()
            words[30] = "zzplanted"
            copy["messages"][1]["content"] = " ".join(words)
            rows.append(copy)
            planted[len(rows)] = original + 1
        else:
            rows.append(fresh(i))
    return rows, planted


def dedup_quality(removed: list[dict], planted: dict[int, int], source: str) -> dict:
    """Recall and precision of the dedup step against the planted copies (a copy and its original are one group:
    either may be the one removed, as the held-out split is read first)."""
    groups: dict[int, int] = {}

    def root(line: int) -> int:
        while line in planted:
            line = planted[line]
        return line

    for copy in planted:
        groups[copy] = root(copy)
    members: dict[int, set[int]] = {}
    for copy, original in groups.items():
        members.setdefault(original, {original}).add(copy)
    in_group = {line: original for original, lines in members.items() for line in lines}
    dedup_lines = [int(r["id"].rsplit(":", 1)[1]) for r in removed if r["step"] == "dedup"]
    correct = [line for line in dedup_lines if line in in_group]
    expected = sum(len(lines) - 1 for lines in members.values())
    # rows that went before dedup ran (truncated, invalid) cannot be found by it
    other = {int(r["id"].rsplit(":", 1)[1]) for r in removed if r["step"] in BEFORE_DEDUP}
    reachable = sum(len(lines - other) - 1 for lines in members.values() if lines - other)
    return {"planted_copies": expected, "reachable": reachable, "removed_by_dedup": len(dedup_lines),
            "recall": round(len(correct) / reachable, 4) if reachable else None,
            "precision": round(len(correct) / len(dedup_lines), 4) if dedup_lines else None}


def engine_timings(texts: list[str], threshold: float, num_perm: int, shingle: int) -> dict:
    """Seconds to MinHash every text and query/insert it in an LSH index, per engine installed."""
    from align.data.curate.dedup import bands_for, shingles

    sets = [sorted(shingles(t, shingle)) for t in texts]
    timings = {}
    import rensa

    started = time.perf_counter()
    lsh = rensa.RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=bands_for(threshold, num_perm))
    for i, items in enumerate(sets):
        minhash = rensa.RMinHash(num_perm=num_perm, seed=42)
        minhash.update(items)
        lsh.query(minhash)
        lsh.insert(i, minhash)
    timings["rensa"] = round(time.perf_counter() - started, 3)
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        timings["datasketch"] = "not installed (pip install datasketch)"
        return timings
    started = time.perf_counter()
    index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, items in enumerate(sets):
        minhash = MinHash(num_perm=num_perm)
        minhash.update_batch([item.encode() for item in items])
        index.query(minhash)
        index.insert(i, minhash)
    timings["datasketch"] = round(time.perf_counter() - started, 3)
    return timings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows (default: 100000)")
    parser.add_argument("--exact", type=float, default=0.05, help="share of planted exact copies (default: 0.05)")
    parser.add_argument("--near", type=float, default=0.05, help="share of planted near copies (default: 0.05)")
    parser.add_argument("--num-proc", type=int, default=1, help="processes for the row-by-row steps (default: 1)")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out, e.g. toxicity")
    parser.add_argument("--streaming", action="store_true", help="curate streaming (curate.streaming=true)")
    parser.add_argument("--memory", metavar="SIZES", help="comma-separated row counts: peak memory in memory and "
                                                          "streaming at each, in fresh processes (e.g. 100000,400000)")
    parser.add_argument("--config", default="default", help="recipe whose curate section (and tokenizer, scorer) "
                                                            "applies (default: default)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/curate.json"), help="JSON results")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="curate overrides, e.g. dedup.threshold=0.7")


def main(args) -> int:
    from align.config import load_recipe
    from align.runs import write_json
    from align.stages.curate import STEPS, curate

    skipped = [s for s in args.skip.split(",") if s]
    unknown = set(skipped) - set(STEPS)
    if unknown:
        from align.errors import ConfigError

        raise ConfigError(f"--skip: unknown steps {sorted(unknown)} (steps: {', '.join(STEPS)})")
    if args.memory:
        return memory_main(args, skipped)
    rows, planted = synthetic_rows(args.rows, args.exact, args.near)
    with tempfile.TemporaryDirectory(prefix="align-bench-curate-") as tmp:
        data = Path(tmp) / "synthetic.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        overrides = [*_overrides(args, skipped, tmp, data), f"streaming={str(args.streaming).lower()}"]
        cfg = load_recipe(args.config, overrides, command="curate")
        folder = curate(cfg, run="bench", force=True)
        report = json.loads((folder / "curate_report.json").read_text())
        removed = [json.loads(line) for line in (folder / "removed.jsonl").read_text().splitlines()]
    dedup = cfg.curate.dedup
    replies = [row["messages"][1]["content"] for row in rows]
    results = {
        "rows": args.rows, "num_proc": args.num_proc, "config": args.config, "skipped": skipped,
        "mode": report["mode"],
        "planted": {"exact_share": args.exact, "near_share": args.near},
        "stage": {key: report[key] for key in ("wall_s", "cpu_s", "rows_per_s", "peak_rss_mb", "rows_out")},
        "steps": {s["name"]: {key: s[key] for key in ("rows_in", "removed", "wall_s", "cpu_s", "rows_per_s", "reasons")}
                  for s in report["steps"]},
        "near_duplicates": dedup_quality(removed, planted, str(data)),
        "minhash_engines_s": engine_timings(replies, dedup.threshold, dedup.num_perm, dedup.shingle),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"curate on {args.rows} rows: {report['rows_per_s']} rows/s, {report['wall_s']} s ({report['cpu_s']} s CPU), "
          f"peak {report['peak_rss_mb']} MB")
    for name, step in results["steps"].items():
        print(f"  {name:<14} {step['rows_in']:>7} rows  {step['wall_s']:>8.2f} s  {step['cpu_s']:>8.2f} s CPU  "
              f"{step['rows_per_s'] or '-':>8} rows/s  removed {step['removed']}")
    quality = results["near_duplicates"]
    print(f"  duplicates: recall {quality['recall']}, precision {quality['precision']} "
          f"({quality['removed_by_dedup']} removed, {quality['reachable']} planted copies reachable)")
    print(f"  MinHash LSH engines (s): {results['minhash_engines_s']}")
    print(f"results: {args.out}")
    return 0


def _overrides(args, skipped: list[str], tmp, data: Path) -> list[str]:
    return [f"runs_dir={tmp}/runs", f"data={data}", f"num_proc={args.num_proc}", "progress=false",
            *[f"{step}.enabled=false" for step in skipped], *args.overrides]


def memory_main(args, skipped: list[str]) -> int:
    """Peak RSS of the stage in memory and streaming at each size, each in a fresh `python -m align.run curate`."""
    from align.hashing import sha256_file
    from align.runs import write_json

    sizes = [int(size) for size in args.memory.split(",") if size]
    results = {"config": args.config, "skipped": skipped, "num_proc": args.num_proc, "runs": []}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="align-bench-curate-") as tmp:
            data = Path(tmp) / "synthetic.jsonl"
            rows, _ = synthetic_rows(size, args.exact, args.near)
            with open(data, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)
            del rows
            outputs = {}
            for streaming in (False, True):
                run = "streaming" if streaming else "memory"
                command = [sys.executable, "-m", "align.run", "curate", "--config", args.config, "--run", run,
                           "--force", *_overrides(args, skipped, tmp, data), f"streaming={str(streaming).lower()}",
                           "stream_above_mb=-1"]
                started = time.time()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                folder = Path(tmp) / "runs" / run / "curate"
                report = json.loads((folder / "curate_report.json").read_text())
                outputs[run] = [sha256_file(folder / name) for name in ("train.jsonl", "test.jsonl", "removed.jsonl")]
                entry = {"rows": size, "mode": report["mode"], "peak_rss_mb": report["peak_rss_mb"],
                         "stage_wall_s": report["wall_s"], "stage_cpu_s": report["cpu_s"],
                         "process_wall_s": round(time.time() - started, 1), "rows_out": report["rows_out"],
                         "file_mb": round(data.stat().st_size / 1e6, 1)}
                results["runs"].append(entry)
                print(f"  {size:>8} rows ({entry['file_mb']} MB)  {entry['mode']:<10} peak {entry['peak_rss_mb']:>7} "
                      f"MB  {entry['stage_wall_s']:>7} s ({entry['stage_cpu_s']} s CPU)  rows out {entry['rows_out']}")
            same = outputs["streaming"] == outputs["memory"]
            results["runs"][-1]["identical_to_in_memory"] = same
            print(f"  {size:>8} rows: streaming wrote {'the same' if same else 'DIFFERENT'} train/test/removed files "
                  f"as in memory")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"results: {args.out}")
    return 0


def cli(argv: list[str]) -> int:
    from align.bench.command import run_subcommand

    return run_subcommand("python -m align.bench curate", __doc__, add_arguments, main, argv)

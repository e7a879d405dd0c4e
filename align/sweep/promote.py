"""--promote-best: the best feasible trial becomes the run's stage artifact, runs/<run>/<stage>/, for what follows.

Its files are hard-linked from the trial's folder (copied where links cannot be made), assembled in the run's
.work folder and renamed into place, so a reader never sees half of it; the manifest gains a `sweep` record (the
study, the trial, its objective value) and the run's name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from align.errors import GateError
from align.paths import move_into_place


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def promote_trial(trial, run_dir: Path, stage: str, record: dict) -> Path:
    """Place the trial's stage folder at run_dir/<stage> (replacing an older one), with `record` in its manifest."""
    from align.runs import read_manifest, write_json

    source = Path(trial.user_attrs["folder"])
    target = run_dir / stage
    current = read_manifest(target) or {}
    if (current.get("sweep") or {}).get("trial") == trial.number and \
            (current.get("sweep") or {}).get("study") == record.get("study"):
        return target  # already in place
    staging = run_dir / ".work" / f"{stage}.sweep-best"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging, copy_function=_link_or_copy)
    manifest = read_manifest(staging)
    manifest.update(run=run_dir.name, sweep={**record, "trial": trial.number, "trial_dir": str(source),
                                             "value": trial.value, "params": trial.params})
    write_json(staging / "manifest.json", manifest)  # a new file: the trial's own manifest stays as it was
    move_into_place(staging, target)
    work = run_dir / ".work"
    if work.exists() and not any(work.iterdir()):
        work.rmdir()
    return target


def promote_best(study, direction: str, run_dir: Path, stage: str, record: dict) -> Path:
    from align.sweep.study import best_trial

    best = best_trial(study, direction)
    if best is None:
        raise GateError(f"sweep {stage}: no trial of {record.get('study')} finished with a model that passed its "
                        f"gate, so none is promoted (see {run_dir / 'sweep' / stage / 'sweep_report.html'})")
    return promote_trial(best, run_dir, stage, record)

"""Run folders, manifests, atomic promotion and lineage.

    runs/<run>/<stage>/        a finished stage: model files, config.yaml, manifest.json, README.md, logs/
    runs/<run>/.work/<stage>/  while a stage runs: output/ (becomes runs/<run>/<stage>) and checkpoints/

A stage writes everything into `.work/<stage>/output` and renames it into place only when it has finished,
so a crash never leaves a folder that looks complete. `--resume` picks the last checkpoint up again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from align.errors import AlignError, GateError

MANIFEST = "manifest.json"
PROMOTABLE = ("promoted", "overridden")
# Files written last into a checkpoint: transformers' Trainer state, align's PPO state.
CHECKPOINT_MARKERS = ("trainer_state.json", "ppo_state.pt")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_text_atomic(path: Path, text: str) -> Path:
    """Write through a temporary file beside the target so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def package_versions(*names: str) -> dict:
    """Installed versions of the named packages (None where one is missing), for provenance in manifests."""
    import importlib.metadata as md

    versions = {}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return versions


def new_run_name(recipe_name: str) -> str:
    return f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class StageWork:
    """The folders of one stage of one run."""

    run_dir: Path
    stage: str
    output_root: Path | None = None  # another home for output/ (a non-main process's scratch folder)

    @property
    def work_dir(self) -> Path:
        return self.run_dir / ".work" / self.stage

    @property
    def output_dir(self) -> Path:
        return (self.output_root or self.work_dir) / "output"

    @property
    def checkpoints_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return self.run_dir / self.stage

    def begin(self, resume: bool) -> None:
        """Open the work folder: kept when resuming, otherwise started afresh."""
        if self.work_dir.exists() and not resume:
            if self.last_checkpoint() is not None:
                print(f"[align] discarding the interrupted {self.stage} in {self.work_dir} "
                      f"(pass --resume to continue it instead)", flush=True)
            shutil.rmtree(self.work_dir)
        if resume and not self.work_dir.exists():
            raise AlignError(f"--resume: nothing to resume in {self.work_dir}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)

    def last_checkpoint(self) -> str | None:
        """The newest complete checkpoint (one killed while being written lacks its final state file)."""
        if not self.checkpoints_dir.exists():
            return None
        complete = [p for p in self.checkpoints_dir.glob("checkpoint-*")
                    if p.name.split("-")[-1].isdigit() and any((p / name).is_file() for name in CHECKPOINT_MARKERS)]
        if not complete:
            return None
        return str(max(complete, key=lambda p: int(p.name.split("-")[-1])))

    def abandon(self) -> None:
        """After a failure: keep checkpoints (for --resume), remove everything else, leave no empty folders."""
        if self.last_checkpoint() is not None:
            return
        shutil.rmtree(self.work_dir, ignore_errors=True)
        for folder in (self.run_dir / ".work", self.run_dir):
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()

    def promote(self) -> Path:
        """Move the finished output into place (replacing an older finished stage of the same run)."""
        if self.final_dir.exists():
            old = self.work_dir / "replaced"
            os.replace(self.final_dir, old)
        os.replace(self.output_dir, self.final_dir)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        work_root = self.run_dir / ".work"
        if work_root.exists() and not any(work_root.iterdir()):
            work_root.rmdir()
        return self.final_dir


@dataclass
class Parent:
    """What a stage starts from: a finished stage folder (with a manifest) or a plain model source."""

    source: str  # something align.models can load
    manifest: dict | None = None
    override_reason: str | None = None

    @property
    def stage_dir(self) -> Path | None:
        return Path(self.source) if self.manifest else None

    @property
    def run_dir(self) -> Path | None:
        return Path(self.source).parent if self.manifest else None

    def describe(self) -> dict:
        if self.manifest is None:
            return {"source": self.source}
        return {"path": self.source, "stage": self.manifest.get("stage"), "status": self.manifest.get("status"),
                "manifest_sha256": sha256_file(Path(self.source) / MANIFEST),
                "gate_override": self.override_reason}


def finished_stages(runs_dir: Path, stage: str) -> list[Path]:
    """Finished folders of one stage across runs, newest first."""
    found = []
    for manifest in Path(runs_dir).glob(f"*/{stage}/{MANIFEST}"):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        found.append((data.get("finished_at", ""), manifest.parent))
    return [path for _, path in sorted(found, reverse=True)]


def latest_promoted(runs_dir: Path, stage: str) -> Path | None:
    for path in finished_stages(runs_dir, stage):
        if (read_manifest(path) or {}).get("status") in PROMOTABLE:
            return path
    return None


def failed_checks(manifest: dict) -> list[str]:
    gate = manifest.get("gate") or {}
    names = [c.get("name", "?") for c in gate.get("checks", []) if not c.get("passed", False)]
    if gate.get("error"):
        names.append(f"error: {gate['error']}")
    return names


def check_parent_gate(stage_dir: Path, manifest: dict, override_reason: str | None) -> None:
    """Refuse a parent whose gate failed, unless the user overrides it with a reason."""
    if manifest.get("status") != "gate_failed" or override_reason:
        return
    checks = ", ".join(failed_checks(manifest)) or "unknown checks"
    raise GateError(
        f"{stage_dir} failed its gate ({checks}) and is not promoted. "
        f"Fix it, pick another parent, or pass --override-gate \"<reason>\" to use it anyway (recorded)."
    )


def resolve_parent(spec: str | None, parent_stages: tuple[str, ...], runs_dir: Path, base_source: str,
                   override_reason: str | None = None) -> Parent:
    """The artifact a stage starts from.

    spec: `--from` (a stage folder, a model folder, a hub id or embedded:...). Without it, the latest promoted
    stage of `parent_stages` across runs; without one of those, the recipe's base model.
    """
    if spec is None:
        for stage in parent_stages:
            found = latest_promoted(runs_dir, stage)
            if found is not None:
                print(f"[align] parent: the latest promoted {stage}, {found}", flush=True)
                spec = str(found)
                break
        else:
            return Parent(source=base_source)
    path = Path(spec)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:  # a plain model folder, a hub id or embedded:...
        return Parent(source=spec)
    check_parent_gate(path, manifest, override_reason)
    return Parent(source=str(path), manifest=manifest,
                  override_reason=override_reason if manifest.get("status") == "gate_failed" else None)


def stage_fingerprint(stage: str, cfg, parent: Parent) -> str:
    """A hash of everything a stage's result depends on: its recipe section and the shared sections, the
    parent (its manifest's hash, or the source name), and the content of every dataset its options name."""
    from align.config import to_dict
    from data.registry import spec_digest

    recipe = to_dict(cfg)
    section = recipe.get(stage, {})
    inputs = {
        "stage": stage,
        "section": section,
        "shared": {key: recipe.get(key) for key in ("model", "lora", "gate", "seed", "device")},
        "parent": parent.describe().get("manifest_sha256") or parent.source,
        "data": {},
    }
    for key, value in section.items():  # the content of every dataset the stage's options name
        digest = spec_digest(value) if isinstance(value, str) else None
        if digest is not None:
            inputs["data"][key] = digest
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def find_resumable(runs_dir: Path, stage: str) -> Path | None:
    """The run with the newest interrupted work folder for this stage (for `--resume` without `--run`)."""
    candidates = [p.parent.parent for p in Path(runs_dir).glob(f"*/.work/{stage}") if p.is_dir()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / ".work" / stage).stat().st_mtime)

"""Run folders, manifests, atomic promotion and lineage.

    runs/<run>/<stage>/              a finished stage: model files, config.yaml, manifest.json, README.md, logs/
                                     (status promoted, overridden or ungated)
    runs/<run>/<stage>.gate_failed/  a finished stage whose gate failed: beside the promoted one, never over it
    runs/<run>/.work/<stage>/        while a stage runs: output/ (moved into place at the end), checkpoints/ and
                                     started.json (the settings it started with, which a resume must match)

A stage writes everything into `.work/<stage>/output` and renames it into place only when it has finished,
so a crash never leaves a folder that looks complete. `--resume` picks the last checkpoint up again, only with
the settings the stage started with (or, with `--resume-changed`, recording what changed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from align.errors import AlignError, ConfigError, GateError
from align.hashing import sha256_file  # noqa: F401  (re-exported: runs.sha256_file)
from align.manifests import MANIFEST, finished_stages, read_json, read_manifest  # noqa: F401  (re-exported)
from align.log import log
from align.paths import move_into_place, write_atomic

STARTED = "started.json"  # in .work/<stage>/: the fingerprint inputs the stage started with
GATE_FAILED_SUFFIX = ".gate_failed"
# Statuses of a finished model in runs/<run>/<stage>/, usable as a parent or to chat with. "ungated" (the gate was
# switched off) is usable too, but a stage that is itself gated refuses to build on it without --allow-ungated.
PROMOTABLE = ("promoted", "overridden", "ungated")
# Files written last into a checkpoint: transformers' Trainer state, align's PPO state.
CHECKPOINT_MARKERS = ("trainer_state.json", "ppo_state.pt")


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


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

    @property
    def gate_failed_dir(self) -> Path:
        return gate_failed_dir(self.final_dir)

    def begin(self, resume: bool, inputs: dict | None = None, accept_changes: bool = False) -> dict | None:
        """Open the work folder: started afresh (recording `inputs`, the stage's fingerprint inputs), or kept when
        resuming — only with the inputs it started with, unless `accept_changes`. Returns the manifest's
        `resumed` record (None for a fresh start)."""
        if not resume:
            if self.work_dir.exists():
                if self.last_checkpoint() is not None:
                    log.info(f"discarding the interrupted {self.stage} in {self.work_dir} "
                             f"(pass --resume to continue it instead)")
                shutil.rmtree(self.work_dir)
            self.output_dir.mkdir(parents=True)
            self.checkpoints_dir.mkdir(parents=True)
            if inputs is not None:
                write_json(self.work_dir / STARTED, {"fingerprint": fingerprint_of(inputs), "inputs": inputs,
                                                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            return None
        if not self.work_dir.exists():
            raise AlignError(f"--resume: nothing to resume in {self.work_dir}")
        started = read_json(self.work_dir / STARTED)
        changes = setting_changes(self.stage, started["inputs"], inputs) if started and inputs is not None else None
        if changes and not accept_changes:
            listed = ", ".join(f"{key} {change['started']!r} -> {change['resumed']!r}" for key, change in changes.items())
            raise ConfigError(f"--resume: {self.stage} in {self.work_dir} started with other settings ({listed}); "
                              f"resume with the settings it started with, start it afresh (without --resume, or "
                              f"remove that folder), or pass --resume-changed to continue anyway (recorded)")
        if started is None:
            log.info(f"{self.work_dir} has no record of the settings it started with: resuming unchecked")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        return {"checkpoint": self.last_checkpoint(), "started_at": (started or {}).get("started_at"),
                "changed": changes if started else None}

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

    def promote(self, target: Path | None = None) -> Path:
        """Move the finished output into place: `target` (default the stage folder), replacing an older one there
        only. A gate-failed model goes to `gate_failed_dir`, so it never replaces a promoted one."""
        target = target or self.final_dir
        move_into_place(self.output_dir, target)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        work_root = self.run_dir / ".work"
        if work_root.exists() and not any(work_root.iterdir()):
            work_root.rmdir()
        return target


@dataclass
class Parent:
    """What a stage starts from: a finished stage folder (with a manifest) or a plain model source."""

    source: str  # something align.models can load
    manifest: dict | None = None
    override_reason: str | None = None
    ungated_allowed: bool = False  # --allow-ungated: a gated stage builds on a parent that was never gated

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
                "gate_override": self.override_reason, "allow_ungated": self.ungated_allowed}


def latest_promoted(runs_dir: Path, stage: str) -> Path | None:
    for path in finished_stages(runs_dir, stage):
        if (read_manifest(path) or {}).get("status") in PROMOTABLE:
            return path
    return None


def failed_checks(gate: dict | None, *, reasons: bool = False) -> list[str]:
    """A gate object's (a manifest's "gate") failed checks by name — "name (reason)" with `reasons` — and its error
    as "error: …", for messages; [] for no gate."""
    gate = gate or {}
    names = [f"{c.get('name', '?')} ({c['reason']})" if reasons and c.get("reason") else c.get("name", "?")
             for c in gate.get("checks", []) if not c.get("passed", False)]
    if gate.get("error"):
        names.append(f"error: {gate['error']}")
    return names


def gate_summary(manifest: dict | None) -> str:
    """One line about a model's manifest: status, gate verdict, failed checks ("no gate run" when none)."""
    if manifest is None:
        return "no gate run (not an align stage folder)"
    status = manifest.get("status", "unknown status")
    gate = manifest.get("gate")
    if not gate:
        return f"{status} · no gate run"
    failed = failed_checks(gate)
    if failed:
        line = f"{status} · gate {gate.get('verdict', 'fail')} · failed: {', '.join(failed)}"
    else:
        line = f"{status} · gate {gate.get('verdict', '?')} ({len(gate.get('checks', []))} checks passed)"
    if gate.get("override"):
        line += f" · override: {gate['override']}"
    return line


def gate_failed_dir(stage_dir: Path) -> Path:
    """Where a stage's gate-failed model lies: beside its promoted folder (runs/<run>/<stage>.gate_failed)."""
    stage_dir = Path(stage_dir)
    return stage_dir.with_name(stage_dir.name + GATE_FAILED_SUFFIX)


def latest_attempt(stage_dir: Path) -> Path:
    """A stage's most recent finished attempt, as a run summary reports it: <stage>.gate_failed when that finished
    after the promoted <stage> (or there is none), else <stage>."""
    failed = read_manifest(gate_failed_dir(stage_dir))
    promoted = read_manifest(stage_dir)
    if failed and (promoted is None or failed.get("finished_at", "") > promoted.get("finished_at", "")):
        return gate_failed_dir(stage_dir)
    return Path(stage_dir)


def check_parent_gate(stage_dir: Path, manifest: dict, override_reason: str | None, *, child_gated: bool = False,
                      allow_ungated: bool = False) -> None:
    """Refuse a parent whose gate failed, unless the user overrides it with a reason; and, for a stage that is
    itself gated, a parent that was never gated, unless --allow-ungated (its gate would compare against a model
    nobody checked)."""
    if manifest.get("status") == "ungated" and child_gated and not allow_ungated:
        raise GateError(f"{stage_dir} was never gated (status ungated: trained with gate.enabled=false), so this "
                        f"stage's gate would compare against a model nobody checked. Gate it (re-run that stage with "
                        f"gate.enabled=true), or pass --allow-ungated to build on it anyway (recorded).")
    if manifest.get("status") != "gate_failed" or override_reason:
        return
    checks = ", ".join(failed_checks(manifest.get("gate"))) or "unknown checks"
    raise GateError(
        f"{stage_dir} failed its gate ({checks}) and is not promoted. "
        f"Fix it, pick another parent, or pass --override-gate \"<reason>\" to use it anyway (recorded)."
    )


def resolve_parent(spec: str | None, parent_stages: tuple[str, ...], runs_dir: Path, base_source: str,
                   override_reason: str | None = None, *, child_gated: bool = False,
                   allow_ungated: bool = False) -> Parent:
    """The artifact a stage starts from.

    spec: `--from` (a stage folder, a model folder, a hub id or embedded:...). Without it, the latest promoted
    stage of `parent_stages` across runs; without one of those, the recipe's base model. A stage folder that
    holds no model because its gate failed is refused, naming the gate-failed folder beside it.
    """
    if spec is None:
        for stage in parent_stages:
            found = latest_promoted(runs_dir, stage)
            if found is not None:
                log.info(f"parent: the latest promoted {stage}, {found}")
                spec = str(found)
                break
        else:
            return Parent(source=base_source)
    path = Path(spec)
    failed = gate_failed_dir(path)
    if not path.exists() and read_manifest(failed) is not None:
        checks = ", ".join(failed_checks((read_manifest(failed) or {}).get("gate"))) or "unknown checks"
        raise GateError(f"{path} holds no promoted model: its gate failed ({checks}) and the model is in {failed}. "
                        f"Fix it, or pass --from {failed} --override-gate \"<reason>\" to use it anyway (recorded).")
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is None:  # a plain model folder, a hub id or embedded:...
        return Parent(source=spec)
    check_parent_gate(path, manifest, override_reason, child_gated=child_gated, allow_ungated=allow_ungated)
    return Parent(source=str(path), manifest=manifest,
                  override_reason=override_reason if manifest.get("status") == "gate_failed" else None,
                  ungated_allowed=allow_ungated and child_gated and manifest.get("status") == "ungated")


def fingerprint_inputs(stage: str, cfg, parent: Parent) -> dict:
    """Everything a stage's result depends on: its recipe section and the shared sections, the parent (its
    manifest's hash, or the source name), and the content of every dataset its options name."""
    from align.config import to_dict
    from align.data.registry import spec_digest

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
    return inputs


def fingerprint_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def stage_fingerprint(stage: str, cfg, parent: Parent) -> str:
    """A hash of `fingerprint_inputs`: a finished stage whose fingerprint matches needs no rerun (pipeline)."""
    return fingerprint_of(fingerprint_inputs(stage, cfg, parent))


def _flat(inputs: dict, stage: str) -> dict[str, object]:
    """Fingerprint inputs as recipe keys: sft.lr, model.source, parent, sft.data (content)."""
    flat: dict[str, object] = {"parent": inputs.get("parent")}

    def walk(node, prefix: str) -> None:
        for key, value in (node or {}).items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(inputs.get("section"), f"{stage}.")
    walk(inputs.get("shared"), "")
    flat.update({f"{stage}.{key} (content)": digest for key, digest in (inputs.get("data") or {}).items()})
    return flat


def setting_changes(stage: str, started: dict, now: dict) -> dict[str, dict]:
    """The settings that differ between two fingerprint inputs: {key: {"started": old, "resumed": new}}."""
    before, after = _flat(started, stage), _flat(now, stage)
    return {key: {"started": before.get(key), "resumed": after.get(key)}
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)}


def find_resumable(runs_dir: Path, stage: str) -> Path | None:
    """The run with the newest interrupted work folder for this stage (for `--resume` without `--run`)."""
    candidates = [p.parent.parent for p in Path(runs_dir).glob(f"*/.work/{stage}") if p.is_dir()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / ".work" / stage).stat().st_mtime)

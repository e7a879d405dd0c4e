"""Which models `serve` offers: a run's promoted chat stages (ppo, dpo, sft: the best first), or the one model
`--model` names, resolved as the chat app resolves them (`ui.chat.resolve_chat_model`). A model whose gate did not
pass (status promoted, or overridden with the reason recorded) is refused unless `allow_ungated`, and so is a
model no align stage made or whose gate was off (no gate verdict)."""

from __future__ import annotations

from pathlib import Path

from align.errors import AlignError, ModelError
from align.runs import gate_summary, read_manifest

#: Statuses served without --allow-ungated: the gate passed, or it failed and a person overrode it (recorded).
#: ("ungated", a stage whose gate was off, is usable as a parent but has no verdict to serve on.)
SERVABLE = ("promoted", "overridden")


def model_id(chat_model) -> str:
    """'<run>/<stage>' for an align stage, else the source as given."""
    manifest = chat_model.manifest or {}
    if manifest.get("run") and manifest.get("stage"):
        return f"{manifest['run']}/{manifest['stage']}"
    return chat_model.name


def check_gate(name: str, manifest: dict | None, allow_ungated: bool) -> None:
    if allow_ungated or (manifest or {}).get("status") in SERVABLE:
        return
    raise AlignError(f"{name} is not served: {gate_summary(manifest)}. Only a model whose gate passed (or was "
                     f"overridden) is served; --allow-ungated serves it anyway")


def served_models(*, run: str | None = None, model: str | None = None, runs_dir: str | Path = "runs",
                  allow_ungated: bool = False) -> list:
    """The ChatModels to serve (not loaded), the default first."""
    from align.ui.chat import CHAT_STAGES, ChatModel, resolve_chat_model

    runs_dir = Path(runs_dir)
    if run and model:
        raise AlignError("give --run or --model, not both")
    if run:
        run_dir = runs_dir / run
        if not run_dir.is_dir():
            raise ModelError(f"no run {run!r} under {runs_dir}/ (no folder {run_dir})")
        found = []
        for stage in CHAT_STAGES:
            manifest = read_manifest(run_dir / stage)
            if manifest is not None and (allow_ungated or manifest.get("status") in SERVABLE):
                found.append(ChatModel(name=str(run_dir / stage), source=str(run_dir / stage), manifest=manifest,
                                       run_dir=run_dir))
        if not found:
            resolve_chat_model(str(run_dir), runs_dir)  # raises its one line: what the run has instead
            raise ModelError(f"run {run_dir} has no chat model to serve")
        return found
    if model:
        path = Path(model).expanduser()
        if (path / "manifest.json").is_file():  # checked here, before the chat app's "using it anyway" notice
            check_gate(str(path), read_manifest(path), allow_ungated)
    chosen = resolve_chat_model(model, runs_dir)
    check_gate(chosen.name, chosen.manifest, allow_ungated)
    return [chosen]

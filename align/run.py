"""align's command line: `python -m align.run <command> [options] [key=value ...]`.

Training commands (sft, rm, dpo, ppo, ...) all go through align.driver.run_stage. Other commands live in their
own modules, registered in COMMANDS with `add_arguments(parser)` and `main(args) -> int`.
Known problems (bad config, bad data, a failed gate, a resume with changed settings, an ungated parent) print one
clear line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from align.offline import set_offline_defaults

set_offline_defaults()  # before anything imports huggingface_hub, datasets or gradio

from align.errors import AlignError  # noqa: E402

# name: (module, one-line help) — commands that are not training stages.
COMMANDS: dict[str, tuple[str, str]] = {
    "recipes": ("align.run", "list the shipped recipes"),
    "data": ("align.run", "list the shipped datasets, or check a dataset row by row (--check SPEC --kind ...)"),
    "curate": ("align.stages.curate", "clean, deduplicate and filter training data (chat or pairs) into runs/<run>/curate"),
    "pipeline": ("align.pipeline", "all stages of a recipe in order, each gated, resumable: SFT → RM → DPO by default"),
    "gate": ("align.gates.command", "toxicity and bias gate of any model, alone or against a --baseline"),
    "eval": ("align.evaluation.command", "a model against a --baseline on data its training never used: preference accuracy, independent-judge win rates (raw and length-controlled), refusals, ROUGE/BLEU"),
    "toxicity-model": ("align.gates.toxicity", "build the offline toxicity scorer (Detoxify format) and print its held-out AUROC"),
    "sweep": ("align.sweep.command", "hyperparameter search over a stage on Optuna (the recipe's sweep: section): every trial a gated, reloadable run; resumable, shared by several workers"),
    "candidates": ("align.candidates", "sample k replies per prompt from a model into the label store (for `label`)"),
    "label": ("align.ui.label_cli", "serve the labeling app (annotators rank replies; admins see progress and export)"),
    "serve": ("align.serving.cli", "an OpenAI-compatible API (chat completions, streaming, feedback, keys, /metrics) over a run's promoted models"),
    "chat": ("align.ui.chat_cli", "chat with a trained model (streaming, compare two, gate verdict); feedback feeds the label store"),
    "bench": ("align.bench", "align's SFT/RM/DPO trainers vs plain TRL (tokens/s, memory, MFU), gate and label-store speed"),
}

EPILOG = """examples:
  python -m align.run sft                              # the default recipe: embedded SmolLM2-135M, CPU, minutes
  python -m align.run sft --config tiny max_steps=5    # any recipe key can be overridden as key=value
  python -m align.run sft lora.enabled=true lr=1e-4    # keys of the stage's own section need no prefix
  python -m align.run sft --help                       # every option of a stage, with its default
"""


def _stage_parser(sub, name: str, help_text: str) -> None:
    from align.config import LoraOptions, ModelOptions, describe_options
    from align.stages import stage_module

    options = stage_module(name).Options
    rows = describe_options(options) + describe_options(ModelOptions, "model.") + describe_options(LoraOptions, "lora.")
    width = max(len(k) for k, _, _ in rows)
    listing = "\n".join(f"  {k:<{width}}  {h} (default: {d})" for k, d, h in rows)
    parser = sub.add_parser(
        name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{help_text}.\n\nRecipe options (override as key=value; `{name}.` prefix optional for the "
                    f"first block):\n{listing}\n\nOther sections: seed, device, runs_dir, gate.* "
                    f"(see the recipe files in align/recipes/).",
    )
    _common_stage_arguments(parser)
    parser.set_defaults(handler=_run_stage_command, stage=name)


def _common_stage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default", help="recipe name (see `recipes`) or YAML path (default: default)")
    parser.add_argument("--from", dest="parent", metavar="ARTIFACT",
                        help="parent: a run stage folder (runs/<run>/sft), a model folder, a hub id, or embedded:... "
                             "(default: the latest promoted parent stage, else the recipe's model.source)")
    parser.add_argument("--run", help="run name: the folder under runs_dir (default: the parent's run, else a new one)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted stage from its last checkpoint (only with the settings it "
                             "started with)")
    parser.add_argument("--override-gate", metavar="REASON",
                        help="use a parent whose gate failed / promote despite a failed gate; the reason is recorded")
    from align.driver import run_safety_arguments

    run_safety_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")


def _run_stage_command(args) -> int:
    from align.config import load_recipe
    from align.driver import run_stage

    cfg = load_recipe(args.config, args.overrides, command=args.stage)
    run_stage(args.stage, cfg, parent_spec=args.parent, run=args.run, resume=args.resume,
              override_gate=args.override_gate, resume_changed=args.resume_changed, allow_ungated=args.allow_ungated)
    return 0


def _list_recipes(args) -> int:
    import yaml

    from align.config import recipe_path, shipped_recipes

    for name in shipped_recipes():
        data = yaml.safe_load(recipe_path(name).read_text()) or {}
        print(f"{name:<24} {data.get('description', '')}")
    return 0


DATA_KINDS = ("chat", "preference", "unpaired", "prompts")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", metavar="SPEC", help="validate a dataset (a file, a shipped name, labels:<store>) "
                                                        "as a stage would, without training: exit 2 at the first bad "
                                                        "row, naming its file, line and field")
    parser.add_argument("--kind", choices=DATA_KINDS, default="chat",
                        help="what the rows must be: chat (sft), preference (rm, dpo), unpaired (kto) or prompts (ppo, "
                             "candidates)")
    parser.add_argument("--split", choices=("train", "test", "all"), default="all", help="which rows (default: all)")


def _check_data(spec: str, kind: str, split: str) -> int:
    from align.data.preferences import load_preferences
    from align.data.registry import load_chat, load_prompts
    from align.data.unpaired import load_unpaired

    from align.data.registry import catalog

    loaders = {"chat": load_chat, "prompts": load_prompts,
               "preference": lambda spec, split: load_preferences(spec, split, on_bad="refuse"),
               "unpaired": lambda spec, split: load_unpaired(spec, split, on_bad="refuse")}
    splits = ("train", "test") if split == "all" and spec in catalog() else (split,)  # a shipped set: two files
    count = sum(len(loaders[kind](spec, part).rows) for part in splits)
    print(f"{spec}: {count} {kind} rows ({split}), all valid")
    return 0


def _list_data(args) -> int:
    from align.data.registry import describe

    if args.check:
        return _check_data(args.check, args.kind, args.split)
    for entry in describe():
        rows = entry["rows"]
        print(f"{entry['name']:<26} {entry['kind']:<11} train {rows['train']:>5}  test {rows['test']:>4}  {entry['license']}")
    return 0


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with `chosen` (the command on the line), only that command's module is imported for
    its arguments (the others' modules load gradio, SQLAlchemy, pandas...: a bad argument fails in a second)."""
    from align.stages import STAGES

    parser = argparse.ArgumentParser(
        prog="python -m align.run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="align: SFT → reward model → DPO/PPO with human labels and toxicity/bias gates between stages.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, help_text in STAGES.items():
        _stage_parser(sub, name, help_text)
    builtin = {"recipes": _list_recipes, "data": _list_data}
    for name, (module_name, help_text) in COMMANDS.items():
        if name in builtin:
            command = sub.add_parser(name, help=help_text, description=help_text)
            if name == "data":
                _data_arguments(command)
            command.set_defaults(handler=builtin[name])
            continue
        command = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is None or chosen == name:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(chosen=next((item for item in argv if not item.startswith("-")), ""))
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand anywhere on the line, before or after options
    unknown = [item for item in extra if "=" not in item or item.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        from align.distributed import check_command

        check_command(args.command, is_stage=hasattr(args, "stage"))
        return int(args.handler(args) or 0)
    except AlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: the unfinished stage stays in runs/<run>/.work; continue it with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

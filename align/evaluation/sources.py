"""What an evaluation measures both models on, chosen so that none of it was a training signal of either.

- Training data: the manifests of a run stage folder, of its ancestors and of the other stages of their runs
  list every dataset a stage read; the `train` splits among them are the training data. A shipped dataset counts
  as used when any dataset of its *family* (the same upstream file, e.g. `hh-harmless` and
  `hh-harmless-chosen`, or `oasst-ranked` and `oasst-top`) was trained on.
- Preference pairs: the test splits of the shipped preference sets of unused families (`eval.preference_sources:
  [auto]`), a seeded sample of `preference_pairs` per set.
- Harmful requests: Do-Not-Answer (`data/benchmarks/do-not-answer`, the categories in
  `eval.harmful_categories`), without the requests the toxicity gate samples with the settings of the recipe and
  of both models' gates, and without any request that appears as a user turn in the training data.
- Benign requests: align's own labelled set (`data/benchmarks/benign-requests`): plain requests and requests that
  only *look* harmful ("How do I kill a Python process?"), half of each.
- References: the test splits of the shipped chat sets of unused families (`eval.reference_sources: [auto]`);
  the prompt is the conversation before its last assistant turn, the reference that turn.

Every unit has an id (`<set>:<row>`), so the measurements of two models are paired unit by unit.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from align.errors import ConfigError, DataError
from align.paths import DATA_DIR

DO_NOT_ANSWER = DATA_DIR / "benchmarks" / "do-not-answer"
BENIGN_REQUESTS = DATA_DIR / "benchmarks" / "benign-requests" / "benign-requests.jsonl"
BENIGN_LABELS = ("benign", "benign-lookalike")


@dataclass
class Units:
    """Everything both models are measured on (see the module docstring)."""

    preference: dict[str, list[dict]]  # source -> [{"id", "prompt", "chosen", "rejected"}]
    harmful: list[dict]  # [{"id", "category", "prompt"}]
    benign: list[dict]  # [{"id", "label", "prompt", "looks_like"}]
    reference: list[dict]  # [{"id", "source", "prompt", "reference", "conversation"}]
    chosen: dict = field(default_factory=dict)  # which sources were chosen, and which were left out as used
    notes: list[str] = field(default_factory=list)

    def generation(self) -> list[tuple[str, dict]]:
        """(section, unit) of every prompt that gets a sampled reply, in one fixed order."""
        return ([("harmful", u) for u in self.harmful] + [("benign", u) for u in self.benign]
                + [("reference", u) for u in self.reference])

    def digest(self) -> str:
        data = {"preference": self.preference, "generation": [(s, u["id"], u["prompt"]) for s, u in self.generation()],
                "reference": [(u["id"], u["conversation"]) for u in self.reference]}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# -------------------------------------------------------------------------------------------- training data


def stage_manifests(*sources: str | None) -> list[dict]:
    """Manifests of each run stage folder given, of its ancestors (parent.path) and of the other stages of their
    runs. Plain model sources (no manifest.json) contribute nothing."""
    from align.runs import MANIFEST, read_manifest

    found: dict[str, dict] = {}
    queue = [Path(s) for s in sources if s and (Path(s) / MANIFEST).is_file()]
    while queue:
        folder = queue.pop()
        key = str(folder.resolve())
        if key in found:
            continue
        manifest = read_manifest(folder)
        if manifest is None:
            continue
        found[key] = manifest
        queue += [p.parent for p in folder.parent.glob(f"*/{MANIFEST}")]  # the other stages of its run
        parent = (manifest.get("parent") or {}).get("path")
        if parent:
            queue.append(Path(parent))
    return list(found.values())


def training_specs(manifests: list[dict]) -> set[str]:
    """Every dataset spec (each part of a comma-joined mix) read as a `train` split by the given stages."""
    from align.data.registry import mix_parts

    specs = set()
    for manifest in manifests:
        for entry in manifest.get("data") or []:
            if entry.get("split") == "train" and entry.get("spec"):
                specs.update(mix_parts(entry["spec"]))
    return specs


def family(name: str) -> str | None:
    """The upstream a shipped dataset was converted from (None for anything not shipped)."""
    from align.data.registry import catalog

    entry = catalog().get(name)
    return entry.get("source") if entry else None


def choose_shipped(requested: list[str], kind: str, used: set[str], option: str) -> tuple[list[str], list[str], list[str]]:
    """(chosen, left out as used in training, notes) for an `eval.*_sources` option."""
    from align.data.registry import catalog

    used_families = {family(s) for s in used} - {None}
    shipped = [name for name, entry in catalog().items() if entry["kind"] == kind]
    if list(requested) == ["auto"]:
        chosen = [name for name in shipped if family(name) not in used_families]
        left_out = [name for name in shipped if family(name) in used_families]
        notes = [] if chosen else [f"eval.{option}: every shipped {kind} set comes from data a stage was trained on: "
                                   f"this section is left out (name sets explicitly to measure anyway)"]
        return chosen, left_out, notes
    notes = []
    for name in requested:
        if name in used or family(name) in used_families:
            notes.append(f"eval.{option}: {name} comes from data a stage was trained on, so its figures are not "
                         f"held-out")
    return list(requested), [], notes


# ---------------------------------------------------------------------------------------------------- units


def _sample(rows: list, n: int, seed: int) -> list:
    """A seeded sample of n rows in a seeded order (n < 0: all of them, shuffled)."""
    shuffled = random.Random(seed).sample(rows, len(rows))
    return shuffled if n < 0 else shuffled[:n]


def _spread(groups: dict[str, list], n: int, seed: int) -> list:
    """n items spread as evenly as possible over the groups, reproducibly shuffled (the gate's own rule)."""
    from align.gates.toxicity_eval import sample_prompts

    return sample_prompts(groups, n, seed)


def preference_units(sources: list[str], per_source: int, seed: int) -> dict[str, list[dict]]:
    from align.data.preferences import load_preferences

    units = {}
    for source in sources:
        rows = load_preferences(source, "test", on_bad="drop").rows
        numbered = _sample(list(enumerate(rows, 1)), per_source, seed)
        units[source] = [{"id": f"{source}:{number}", **row} for number, row in sorted(numbered, key=lambda x: x[0])]
    return units


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(path, number, None, f"not valid JSON: {exc.msg}") from None
    return rows


def gate_sampled_requests(gate_options: list) -> tuple[set[str], bool]:
    """The Do-Not-Answer requests the toxicity gate samples with any of these gate settings, and whether one of
    them samples every request (then the eval cannot keep clear of them)."""
    from align.gates.policy import as_options, effective_options
    from align.gates.toxicity_eval import prompt_sources, sample_prompts

    sampled, everything = set(), False
    for raw in gate_options:
        try:
            options = effective_options(as_options(raw))
        except Exception:  # a manifest from an older align whose gate section no longer parses: nothing to skip
            continue
        if "toxicity" not in options.benchmarks or "do-not-answer" not in options.toxicity_sources:
            continue
        if options.toxicity_prompts < 0:
            everything = True
            continue
        prompts = sample_prompts(prompt_sources(list(options.toxicity_sources)), options.toxicity_prompts,
                                 options.seed)
        sampled.update(p.text for p in prompts if p.source == "do-not-answer")
    return sampled, everything


def training_user_turns(specs: set[str]) -> set[str]:
    """Every user turn (stripped) of the training splits of these specs; specs that cannot be read are skipped."""
    from align.data.registry import read_spec

    turns = set()
    for spec in specs:
        try:
            rows = read_spec(spec, "train")[0]
        except (DataError, OSError):
            continue
        for row in rows:
            if not isinstance(row, dict):
                continue
            for key in ("messages", "prompt", "chosen"):
                value = row.get(key)
                if isinstance(value, str) and key == "prompt":
                    turns.add(value.strip())
                elif isinstance(value, list):
                    turns.update(m["content"].strip() for m in value if isinstance(m, dict)
                                 and m.get("role") == "user" and isinstance(m.get("content"), str))
    return turns


def harmful_units(categories: list[str], n: int, seed: int, skip: set[str]) -> list[dict]:
    known = sorted(p.stem for p in DO_NOT_ANSWER.glob("*.jsonl"))
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ConfigError(f"eval.harmful_categories: unknown {unknown}; Do-Not-Answer has {known}")
    groups = {}
    for category in categories:
        rows = _read_jsonl(DO_NOT_ANSWER / f"{category}.jsonl")
        groups[category] = [{"id": f"do-not-answer/{category}:{number}", "category": category,
                             "prompt": [{"role": "user", "content": row["prompt"].strip()}]}
                            for number, row in enumerate(rows, 1) if row["prompt"].strip() not in skip]
    return _spread(groups, n, seed)


def benign_units(n: int, seed: int) -> list[dict]:
    groups: dict[str, list] = {label: [] for label in BENIGN_LABELS}
    for number, row in enumerate(_read_jsonl(BENIGN_REQUESTS), 1):
        if row.get("label") not in groups or not isinstance(row.get("prompt"), str):
            raise DataError(BENIGN_REQUESTS, number, "label", f"expected one of {list(BENIGN_LABELS)} and a prompt")
        groups[row["label"]].append({"id": f"benign-requests:{number}", "label": row["label"],
                                     "looks_like": row.get("looks_like"),
                                     "prompt": [{"role": "user", "content": row["prompt"]}]})
    return _spread(groups, n, seed)


def reference_units(sources: list[str], n: int, seed: int) -> list[dict]:
    from align.data.registry import load_chat

    groups = {}
    for source in sources:
        rows = load_chat(source, "test").rows
        groups[source] = [{"id": f"{source}:{number}", "source": source, "prompt": row["messages"][:-1],
                           "reference": row["messages"][-1]["content"], "conversation": row["messages"]}
                          for number, row in enumerate(rows, 1)]
    return _spread(groups, n, seed)


def select_units(options, model: str, baseline: str | None, gate_options) -> Units:
    """The units of an evaluation of `model` (against `baseline`) with the `eval` options; `gate_options`: the
    recipe's gate section (the gates of both models' manifests are added)."""
    manifests = stage_manifests(model, baseline)
    used = training_specs(manifests)
    notes: list[str] = []
    preference, preference_left_out, more = choose_shipped(list(options.preference_sources), "preference", used,
                                                           "preference_sources")
    notes += more
    references, reference_left_out, more = choose_shipped(list(options.reference_sources), "chat", used,
                                                          "reference_sources")
    notes += more
    gates = [gate_options] + [m["config"]["gate"] for m in manifests if (m.get("config") or {}).get("gate")]
    skip, everything = gate_sampled_requests(gates)
    if everything:
        notes.append("a gate's toxicity check samples every Do-Not-Answer request (gate.full or "
                      "gate.toxicity_prompts=-1): the harmful requests overlap the gate's prompts")
        skip = set()
    trained_turns = training_user_turns(used)
    harmful = harmful_units(list(options.harmful_categories), options.harmful_prompts, options.seed,
                            skip | trained_turns)
    return Units(
        preference=preference_units(preference, options.preference_pairs, options.seed),
        harmful=harmful,
        benign=benign_units(options.benign_prompts, options.seed),
        reference=reference_units(references, options.reference_prompts, options.seed),
        chosen={"trained_on": sorted(used), "preference": preference, "preference_left_out": preference_left_out,
                "reference": references, "reference_left_out": reference_left_out,
                "harmful_categories": list(options.harmful_categories),
                "harmful_skipped_as_gate_prompts": len(skip)},
        notes=notes,
    )


# ------------------------------------------------------------------------------------------------ gate figures


def gate_figures(source: str | None, gate_options: list) -> dict | None:
    """A model's gate figures as a gate measured them, never recomputed: {"metrics": {name: {value, ci95}},
    "fingerprint", "origin"}. From the model's manifest (a gated stage folder), else from the gates' cache of
    measurements (align.gates.runner) under any of `gate_options` (the settings tried in order); None if neither.
    """
    from align.gates.policy import as_options, fingerprint
    from align.gates.runner import measurement_cache_file
    from align.runs import read_manifest

    if not source:
        return None
    gate = ((read_manifest(Path(source)) or {}) if Path(source).is_dir() else {}).get("gate")
    if gate and gate.get("checks") and not gate.get("error"):
        return {"metrics": {c["name"]: {"value": c.get("value"), "ci95": c.get("ci95")} for c in gate["checks"]},
                "fingerprint": (gate.get("figures") or {}).get("fingerprint"),
                "origin": f"the gate in {Path(source) / 'manifest.json'}"}
    for raw in gate_options:
        try:
            options = as_options(raw)
            path = measurement_cache_file(source, options)
            if path.is_file():
                measured = json.loads(path.read_text(encoding="utf-8"))
                return {"metrics": measured.get("metrics") or {}, "fingerprint": fingerprint(options),
                        "origin": f"the gates' cache of measurements ({path})"}
        except Exception:  # settings of an older align that no longer parse, an unreadable cache entry: skip
            continue
    return None

"""Build align's shipped chat (SFT) and preference datasets from the public copies in ../shared/datasets.

    python -m align.data.build [--shared PATH]

Every shipped file under data/chat/ and data/preferences/, and data/catalog.json, is regenerated from the
sources, byte for byte the same on each run (rows in a fixed order, gzip with mtime=0); nothing else is
touched. Rows are TRL's conversational formats:

- chat:       {"messages": [{"role": "system|user|assistant", "content": ...}, ...]}
- preference: {"prompt": [messages...], "chosen": [assistant message], "rejected": [assistant message]}
- unpaired:   {"prompt": [messages...], "completion": [assistant message], "label": true|false} (KTO)

Each dataset is split once into train and test (10 % test) by a seeded permutation of *groups* of rows, so
that rows sharing a conversation never straddle the split (HH: the first user turn, OpenAssistant: the
tree, the demos: the prompt). The HH chat and preference files are derived from one split of the pairs,
so SFT never trains on a dialogue whose prompt is in the preference test set.

Rows that cannot be converted faithfully are dropped and counted; the counts are printed, written to the
catalog's notes and reported in data/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from align.paths import write_atomic

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_SHARED = DATA_DIR.parent.parent / "shared" / "datasets"
CATALOG_PATH = DATA_DIR / "catalog.json"

SPLIT_SEED = 1729
TEST_FRACTION = 0.1
SPLITS = ("train", "test")

Message = dict[str, str]
Row = dict[str, list[Message]]


class Dropped(Exception):
    """A source row that cannot be converted faithfully; `reason` is the short label it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------- messages


def message(role: str, content: str) -> Message:
    """One chat message in TRL's format."""
    return {"role": role, "content": content}


def check_alternation(messages: list[Message], last_role: str) -> None:
    """Raise Dropped unless the messages are an optional system message, then user/assistant turns that
    alternate starting with user and ending with `last_role`, none of them empty."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        raise Dropped("no turns")
    if any(not m["content"] for m in messages):
        raise Dropped("empty turn")
    for index, turn in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise Dropped("roles do not alternate user/assistant")
    if turns[-1]["role"] != last_role:
        raise Dropped(f"last turn is not the {last_role}'s")


def preference_row(prompt: list[Message], chosen: str, rejected: str) -> Row:
    """A TRL conversational preference row; raises Dropped for an empty or tied pair of replies."""
    chosen, rejected = chosen.strip(), rejected.strip()
    if not chosen or not rejected:
        raise Dropped("empty reply")
    if chosen == rejected:
        raise Dropped("chosen and rejected replies are identical")
    check_alternation(prompt, last_role="user")
    return {"prompt": prompt, "chosen": [message("assistant", chosen)],
            "rejected": [message("assistant", rejected)]}


# ------------------------------------------------------------------------------------------- HH-RLHF

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
HH_SPEAKER_TAG = re.compile(r"(?:Human|Assistant):")


def parse_hh_dialogue(text: str) -> list[Message]:
    """Split an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into chat messages.

    Each turn is stripped. Raises Dropped when the transcript is malformed: text before the first turn, an
    empty turn, a speaker tag inside a turn (two turns run together, or a turn given to the wrong
    speaker), roles that do not alternate starting with the user, or a last turn that is not the
    assistant's.
    """
    parts = HH_TURN.split(text)
    if parts[0].strip():
        raise Dropped("text before the first turn")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        if HH_SPEAKER_TAG.search(content):
            raise Dropped("speaker tag inside a turn")
        messages.append(message(HH_ROLES[speaker], content))
    check_alternation(messages, last_role="assistant")
    return messages


def hh_pair_to_preference(chosen_text: str, rejected_text: str) -> Row:
    """Turn one HH pair of transcripts into a preference row: the shared turns become the prompt, the two
    last assistant replies become chosen and rejected. Raises Dropped when either transcript is malformed,
    when the two differ anywhere but in the last reply, or when the replies are empty or identical."""
    try:
        chosen = parse_hh_dialogue(chosen_text)
    except Dropped as error:
        raise Dropped(f"chosen dialogue malformed: {error.reason}") from None
    try:
        rejected = parse_hh_dialogue(rejected_text)
    except Dropped as error:
        raise Dropped(f"rejected dialogue malformed: {error.reason}") from None
    if chosen[:-1] != rejected[:-1]:
        raise Dropped("chosen and rejected differ before the last reply")
    return preference_row(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])


def hh_group_key(chosen_text: str) -> str:
    """The split group of an HH pair: its first user turn (HH repeats opening requests across pairs)."""
    parts = HH_TURN.split(chosen_text)
    return parts[2].strip() if len(parts) > 2 else chosen_text.strip()


# ------------------------------------------------------------------------------------- OpenAssistant

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def usable_replies(node: dict) -> list[dict]:
    """A message's replies that can be used (not deleted, not rejected by review, not empty), best first:
    ranked replies by rank, then unranked ones in file order."""
    replies = [reply for reply in node.get("replies", [])
               if not reply.get("deleted") and reply.get("review_result") is not False
               and reply.get("text", "").strip()]
    return sorted(replies, key=lambda reply: (reply.get("rank") is None, reply.get("rank") or 0))


def oasst_message(node: dict) -> Message:
    """An OpenAssistant message as a chat message."""
    return message(OASST_ROLES[node["role"]], node["text"].strip())


def oasst_top_path(root: dict) -> list[Message] | None:
    """The best-ranked path through an OpenAssistant tree, as chat messages ending with an assistant turn.

    At each user turn the best-ranked assistant reply is taken; after it, the conversation goes on with the
    best (first, as prompter replies are not ranked) user follow-up that itself has an assistant reply.
    Returns None when the root prompt has no usable reply.
    """
    messages: list[Message] = []
    user = root
    while True:
        assistants = usable_replies(user)
        if not assistants:
            break
        best = assistants[0]
        messages += [oasst_message(user), oasst_message(best)]
        follow_ups = [reply for reply in usable_replies(best) if usable_replies(reply)]
        if not follow_ups:
            break
        user = follow_ups[0]
    return messages or None


def oasst_ranked_pairs(root: dict, dropped: Counter | None = None) -> list[Row]:
    """Every (better, worse) pair of ranked sibling assistant replies in an OpenAssistant tree, at every
    depth, with the conversation up to their parent user turn as the prompt. A parent with k ranked
    replies gives k*(k-1)/2 pairs; unranked replies take part in none. Ties and identical replies are
    counted in `dropped`."""
    dropped = Counter() if dropped is None else dropped
    rows: list[Row] = []

    def visit(user: dict, history: list[Message]) -> None:
        prompt = history + [oasst_message(user)]
        replies = usable_replies(user)
        ranked = [reply for reply in replies if reply.get("rank") is not None]
        for i, better in enumerate(ranked):
            for worse in ranked[i + 1:]:
                try:
                    if better["rank"] == worse["rank"]:
                        raise Dropped("tied rank")
                    rows.append(preference_row(prompt, better["text"], worse["text"]))
                except Dropped as error:
                    dropped[error.reason] += 1
        for reply in replies:
            for follow_up in usable_replies(reply):
                visit(follow_up, prompt + [oasst_message(reply)])

    visit(root, [])
    return rows


# ----------------------------------------------------------------------------------- Alpaca, ShareGPT

SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def alpaca_to_chat(row: dict) -> Row:
    """An Alpaca row as a two-turn chat: instruction (and the input, if any, after a blank line) as the
    user turn, output as the assistant turn."""
    instruction, extra, output = (str(row.get(key) or "").strip() for key in ("instruction", "input", "output"))
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [message("user", user), message("assistant", output)]
    check_alternation(messages, last_role="assistant")
    return {"messages": messages}


def sharegpt_message(turn: dict) -> Message:
    """A ShareGPT turn ({"from", "value"}) as a chat message."""
    role = SHAREGPT_ROLES.get(turn.get("from"))
    if role is None:
        raise Dropped(f"unknown speaker {turn.get('from')!r}")
    return message(role, str(turn.get("value") or "").strip())


def sharegpt_to_preference(row: dict) -> Row:
    """A LLaMA-Factory ShareGPT preference row (conversations, chosen, rejected) as a TRL preference row."""
    prompt = [sharegpt_message(turn) for turn in row["conversations"]]
    chosen, rejected = sharegpt_message(row["chosen"]), sharegpt_message(row["rejected"])
    if chosen["role"] != "assistant" or rejected["role"] != "assistant":
        raise Dropped("chosen or rejected is not an assistant reply")
    return preference_row(prompt, chosen["content"], rejected["content"])


# --------------------------------------------------------------------------------------------- splits


def split_by_group(group_keys: list[str], test_fraction: float = TEST_FRACTION,
                   seed: int = SPLIT_SEED) -> list[str]:
    """Assign each row "train" or "test" so that rows with the same group key share a split.

    The distinct groups (in first-seen order) are shuffled with a seeded generator; whole groups go to
    test, in that order, until test holds round(test_fraction * rows) rows or more.
    """
    groups = list(dict.fromkeys(group_keys))
    random.Random(seed).shuffle(groups)
    sizes = Counter(group_keys)
    target = round(test_fraction * len(group_keys))
    test_groups: set[str] = set()
    test_rows = 0
    for group in groups:
        if test_rows >= target:
            break
        test_groups.add(group)
        test_rows += sizes[group]
    return ["test" if key in test_groups else "train" for key in group_keys]


# ------------------------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
    """One shipped dataset: its rows per split and what the conversion dropped."""

    name: str
    kind: str  # "chat" | "preference" | "unpaired"
    license: str
    source: str
    notes: str
    compress: bool = False
    splits: dict[str, list[Row]] = field(default_factory=lambda: {split: [] for split in SPLITS})
    dropped: Counter = field(default_factory=Counter)
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, split: str, row: Row) -> None:
        """Add a row to a split, dropping an exact duplicate of a row already added to either split."""
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key in self._seen:
            self.dropped["exact duplicate row"] += 1
            return
        self._seen.add(key)
        self.splits[split].append(row)

    def path(self, split: str) -> str:
        """The file of a split, relative to data/."""
        folder = "chat" if self.kind == "chat" else "preferences"
        return f"{folder}/{self.name}.{split}.jsonl" + (".gz" if self.compress else "")

    def catalog_entry(self) -> dict:
        """This dataset's entry in data/catalog.json."""
        dropped = "; ".join(f"{count} {reason}" for reason, count in sorted(self.dropped.items()))
        notes = self.notes + (f" Dropped: {dropped}." if dropped else " Nothing dropped.")
        return {"name": self.name, "kind": self.kind,
                "files": {split: self.path(split) for split in SPLITS},
                "rows": {split: len(rows) for split, rows in self.splits.items()},
                "license": self.license, "source": self.source, "notes": notes}


def read_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for each line of a JSON-lines file, gzipped or not."""
    from align.errors import DataError

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(path, number, None, f"not JSON: {error}") from None


def convert_rows(dataset: Dataset, rows: Iterable[dict], convert: Callable[[dict], Row],
                 group: Callable[[Row], str]) -> None:
    """Convert source rows (dropping and counting failures), split them by group and add them."""
    converted = []
    for row in rows:
        try:
            converted.append(convert(row))
        except Dropped as error:
            dataset.dropped[error.reason] += 1
    for row, split in zip(converted, split_by_group([group(row) for row in converted])):
        dataset.add(split, row)


def build_hh(shared: Path) -> tuple[Dataset, Dataset]:
    """HH-RLHF harmless-base: the chosen dialogues as chat, the pairs as preferences, from one split."""
    path = shared / "preferences" / "hh-rlhf-harmless-base-test.jsonl.gz"
    source = "https://github.com/anthropics/hh-rlhf (harmless-base, test split)"
    chat = Dataset("hh-harmless-chosen", "chat", "MIT", source, compress=True, notes=(
        "Chosen dialogues of Anthropic HH-RLHF harmless-base (test split), one message per turn. "
        "License file: licenses/hh-rlhf.LICENSE. Split shared with hh-harmless (grouped by first user turn)."))
    preference = Dataset("hh-harmless", "preference", "MIT", source, compress=True, notes=(
        "Anthropic HH-RLHF harmless-base (test split): shared turns as the prompt, last replies as "
        "chosen/rejected. License file: licenses/hh-rlhf.LICENSE. Split shared with hh-harmless-chosen."))
    pairs = [pair for _, pair in read_json_lines(path)]
    splits = split_by_group([hh_group_key(pair["chosen"]) for pair in pairs])
    for pair, split in zip(pairs, splits):
        try:
            chat.add(split, {"messages": parse_hh_dialogue(pair["chosen"])})
        except Dropped as error:
            chat.dropped[error.reason] += 1
        try:
            preference.add(split, hh_pair_to_preference(pair["chosen"], pair["rejected"]))
        except Dropped as error:
            preference.dropped[error.reason] += 1
    return chat, preference


def build_oasst(shared: Path) -> tuple[Dataset, Dataset]:
    """OpenAssistant trees: the top-ranked path of each as chat, every ranked sibling pair as preferences;
    both split by tree, with one split."""
    path = shared / "preferences" / "oasst-en-100-trees.jsonl"
    source = ("https://github.com/LAION-AI/Open-Assistant "
              "(model/model_eval/manual/data/en_100_tree.jsonl)")
    chat = Dataset("oasst-top", "chat", "Apache-2.0", source, notes=(
        "Best-ranked path through each of 100 English OpenAssistant trees (rank 0 reply at every assistant "
        "level, first user follow-up that has a reply). License file: licenses/open-assistant.LICENSE. "
        "Split by tree, shared with oasst-ranked."))
    preference = Dataset("oasst-ranked", "preference", "Apache-2.0", source, notes=(
        "Every better/worse pair of human-ranked sibling assistant replies, prompt = conversation up to "
        "their parent. License file: licenses/open-assistant.LICENSE. Split by tree, shared with oasst-top."))
    trees = [tree for _, tree in read_json_lines(path)]
    splits = split_by_group([tree["message_tree_id"] for tree in trees])
    for tree, split in zip(trees, splits):
        messages = oasst_top_path(tree["prompt"])
        if messages is None:
            chat.dropped["tree without an assistant reply"] += 1
        else:
            chat.add(split, {"messages": messages})
        for row in oasst_ranked_pairs(tree["prompt"], preference.dropped):
            preference.add(split, row)
    return chat, preference


def build_alpaca(shared: Path) -> Dataset:
    """The Alpaca demo from LLaMA-Factory as two-turn chats."""
    dataset = Dataset(
        "alpaca-en-demo", "chat", "CC-BY-NC-4.0",
        "https://github.com/hiyouga/LLaMA-Factory (data/alpaca_en_demo.json), from Stanford Alpaca",
        notes=("NON-COMMERCIAL: Alpaca data is CC BY-NC 4.0 (research use only). Instruction + optional "
               "input as the user turn, output as the assistant turn. License files: "
               "licenses/alpaca.CC-BY-NC-4.0.LICENSE, licenses/llamafactory.LICENSE."))
    rows = json.loads((shared / "sft" / "alpaca-en-demo.json").read_text(encoding="utf-8"))
    convert_rows(dataset, rows, alpaca_to_chat, group=lambda row: row["messages"][0]["content"])
    return dataset


def build_llamafactory_dpo(shared: Path) -> Dataset:
    """LLaMA-Factory's ShareGPT DPO demo as TRL preference rows."""
    dataset = Dataset(
        "llamafactory-dpo-en-demo", "preference", "Apache-2.0",
        "https://github.com/hiyouga/LLaMA-Factory (data/dpo_en_demo.json)",
        notes=("ShareGPT conversations (human->user, gpt->assistant, system->system) as the prompt, "
               "model-written chosen/rejected replies. License file: licenses/llamafactory.LICENSE."))
    rows = json.loads((shared / "preferences" / "llamafactory-dpo-en-demo.json").read_text(encoding="utf-8"))
    convert_rows(dataset, rows, sharegpt_to_preference,
                 group=lambda row: json.dumps(row["prompt"], ensure_ascii=False))
    return dataset


def labelled_conversation_to_unpaired(row: dict) -> dict:
    """A LLaMA-Factory KTO row ({"messages": [..., assistant reply], "label": bool}) as a TRL unpaired row: the
    turns before the last reply as the prompt, the last reply as the completion."""
    messages = [message(m["role"], str(m.get("content") or "").strip()) for m in row["messages"]]
    if not isinstance(row.get("label"), bool):
        raise Dropped("label is not true or false")
    check_alternation(messages, last_role="assistant")
    if len(messages) < 2:
        raise Dropped("no turns")
    return {"prompt": messages[:-1], "completion": messages[-1:], "label": row["label"]}


def build_llamafactory_kto(shared: Path) -> Dataset:
    """LLaMA-Factory's KTO demo (conversations labelled desirable or not) as TRL unpaired rows."""
    dataset = Dataset(
        "llamafactory-kto-en-demo", "unpaired", "Apache-2.0",
        "https://github.com/hiyouga/LLaMA-Factory (data/kto_en_demo.json)",
        notes=("Labelled conversations: every turn but the last as the prompt, the last (model-written) assistant "
               "reply as the completion, `label` true (desirable) or false (undesirable). License file: "
               "licenses/llamafactory.LICENSE."))
    rows = json.loads((shared / "preferences" / "llamafactory-kto-en-demo.json").read_text(encoding="utf-8"))
    convert_rows(dataset, rows, labelled_conversation_to_unpaired,
                 group=lambda row: json.dumps(row["prompt"], ensure_ascii=False))
    return dataset


def build_all(shared: Path) -> list[Dataset]:
    """Every shipped dataset, in catalog order (chat first, then preferences, then unpaired examples)."""
    hh_chat, hh_preference = build_hh(shared)
    oasst_chat, oasst_preference = build_oasst(shared)
    return [hh_chat, oasst_chat, build_alpaca(shared),
            hh_preference, oasst_preference, build_llamafactory_dpo(shared), build_llamafactory_kto(shared)]


# --------------------------------------------------------------------------------------------- output


def jsonl_bytes(rows: Iterable[Row], compress: bool) -> bytes:
    """Rows as JSON lines (UTF-8), gzipped reproducibly (no name, mtime 0) when asked."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    return gzip.compress(text, compresslevel=9, mtime=0) if compress else text


def write_bytes(path: Path, content: bytes) -> None:
    """Write a file atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, content)


def write_all(datasets: list[Dataset], data_dir: Path = DATA_DIR) -> list[dict]:
    """Write every dataset's split files and data/catalog.json; returns the catalog."""
    catalog = []
    for dataset in datasets:
        for split, rows in dataset.splits.items():
            write_bytes(data_dir / dataset.path(split), jsonl_bytes(rows, dataset.compress))
        catalog.append(dataset.catalog_entry())
    write_bytes(data_dir / CATALOG_PATH.name,
                (json.dumps(catalog, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return catalog


def main(argv: list[str] | None = None) -> int:
    """Regenerate the shipped datasets and print their row counts and what was dropped."""
    parser = argparse.ArgumentParser(prog="python -m align.data.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help=f"the public dataset copies (default: {DEFAULT_SHARED})")
    args = parser.parse_args(argv)
    if not (args.shared / "README.md").is_file():
        parser.error(f"{args.shared} is not the shared datasets folder (no README.md there)")
    datasets = build_all(args.shared)
    write_all(datasets)
    print(f"{'dataset':28} {'kind':10} {'train':>6} {'test':>6}  dropped")
    for dataset in datasets:
        counts = {split: len(rows) for split, rows in dataset.splits.items()}
        dropped = ", ".join(f"{reason}: {n}" for reason, n in sorted(dataset.dropped.items())) or "-"
        print(f"{dataset.name:28} {dataset.kind:10} {counts['train']:>6} {counts['test']:>6}  {dropped}")
    print(f"wrote {len(datasets) * 2} files and {CATALOG_PATH.relative_to(DATA_DIR.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

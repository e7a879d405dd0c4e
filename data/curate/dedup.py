"""Exact and near duplicates.

Each row is judged on one text: a chat's whole conversation; a preference pair's prompt and both replies (`pair`,
the default: the same question may well have several different pairs) or its prompt alone (`prompt`: one pair per
question). The text is normalised first (lower case, punctuation and runs of spaces dropped), so that "Hi!" and
"hi" match.
- exact: the normalised text's hash (blake2b); the first row of each hash stays;
- near: MinHash over word shingles (`shingle` words each, `num_perm` permutations) in an LSH index (rensa's
  RMinHashLSH: about 20x faster than datasketch's MinHashLSH on this machine, see the README). A row whose
  estimated Jaccard similarity with a row already kept reaches `threshold` goes, naming that row.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from tqdm.auto import tqdm

from align.config import SHARE, opt
from align.data.curate import Removed, StepResult, row_text, user_text

STEP = "dedup"
ORDERED = True  # a row is a duplicate of an earlier one
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Options:
    enabled: bool = opt(True, "drop exact and near duplicates")
    exact: bool = opt(True, "drop rows whose normalised text is the same as an earlier row's")
    near: bool = opt(True, "drop rows whose MinHash Jaccard similarity with an earlier row reaches `threshold`")
    threshold: float = opt(0.8, "Jaccard similarity (over word shingles) from which a row is a near duplicate", **SHARE)
    shingle: int = opt(3, "words per shingle", min=1)
    num_perm: int = opt(128, "MinHash permutations (more: a closer estimate, slower)", min=16)
    preference_on: str = opt("pair", "what makes two preference rows duplicates: the whole pair, or the prompt alone",
                             choices=("pair", "prompt"))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text: str, n: int) -> set[str]:
    """The set of n-word shingles of a text (the whole text when it is shorter than n words)."""
    tokens = words(text)
    if len(tokens) <= n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def key_text(record, preference_on: str) -> str:
    if record.kind == "preference" and preference_on == "prompt":
        return user_text(record.row)
    return row_text(record.row)


def bands_for(threshold: float, num_perm: int) -> int:
    """LSH bands whose S-curve midpoint (1/b)^(1/r) sits just under the threshold (so near pairs become candidates;
    each candidate is then checked against the threshold itself)."""
    options = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    fitting = [b for b in options if (1 / b) ** (b / num_perm) <= threshold - 0.05]
    return min(fitting) if fitting else max(options)


class Step:
    """Dedup over chunks of rows in order: what it keeps from one chunk to the next is the hash of each kept row's
    text, its MinHash signature in the LSH index and its id (never the rows)."""

    def __init__(self, options, env):
        self.options, self.progress = options, env.progress
        self.notes = {"engine": "rensa", "threshold": options.threshold, "shingle": options.shingle,
                      "num_perm": options.num_perm}
        self.seen: dict[bytes, str] = {}
        self.lsh = None
        self.minhashes: list = []
        self.kept_ids: list[str] = []
        if options.near:
            import rensa

            bands = bands_for(options.threshold, options.num_perm)
            self.notes["bands"] = bands
            self.lsh = rensa.RMinHashLSH(threshold=options.threshold, num_perm=options.num_perm, num_bands=bands)

    def apply(self, records) -> StepResult:
        options = self.options
        result = StepResult(kept=[], notes=self.notes)
        for record in tqdm(records, desc=STEP, unit="row", disable=not self.progress):
            text = key_text(record, options.preference_on)
            if options.exact:
                digest = hashlib.blake2b(" ".join(words(text)).encode(), digest_size=16).digest()
                if digest in self.seen:
                    result.removed.append(Removed(record, STEP, "exact_duplicate", f"same text as {self.seen[digest]}"))
                    continue
            if self.lsh is not None:
                import rensa

                minhash = rensa.RMinHash(num_perm=options.num_perm, seed=42)
                minhash.update(sorted(shingles(text, options.shingle)))
                match = max(((minhash.jaccard(self.minhashes[key]), key) for key in self.lsh.query(minhash)),
                            default=None)
                if match is not None and match[0] >= options.threshold:
                    result.removed.append(Removed(record, STEP, "near_duplicate",
                                                  f"Jaccard {match[0]:.2f} with {self.kept_ids[match[1]]}"))
                    continue
                self.lsh.insert(len(self.minhashes), minhash)
                self.minhashes.append(minhash)
            if options.exact:
                self.seen[digest] = record.id
            if self.lsh is not None:
                self.kept_ids.append(record.id)
            result.kept.append(record)
        return result


def apply(records, options, env) -> StepResult:
    return Step(options, env).apply(records)

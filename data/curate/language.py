"""Language filter: rows whose text is not in one of the recipe's languages go.

The detector is lingua's (lingua-language-detector), which ships its models inside the wheel, so it runs offline.
A row is judged on its whole text (every turn); a text shorter than `min_chars` is too short to tell and stays.
`detect_among` limits the languages the detector considers (faster, and fewer confusions between close ones: on the
shipped HH rows the whole set of 75 read 7 short English exchanges as Norwegian, Maori, French or German);
`low_accuracy` uses lingua's trigram-only models (several times faster and lighter, but wrong on short texts).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from align.config import opt
from align.errors import ConfigError
from align.data.curate import Removed, StepResult, row_text

STEP = "language"
# The languages the detector chooses among by default: widely written ones, kept apart well by lingua.
COMMON = ("ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "nl", "pl", "pt", "ru", "sv", "tr", "uk", "vi",
          "zh")


@dataclass
class Options:
    enabled: bool = opt(True, "drop rows that are not in one of `languages`")
    languages: list = opt(["en"], "ISO 639-1 codes of the languages to keep")
    detect_among: list = opt(list(COMMON), "ISO 639-1 codes the detector chooses from, besides `languages` (empty: "
                                           "all 75 lingua knows: slower, and short English texts get read as Norwegian "
                                           "or Maori)")
    min_chars: int = opt(20, "texts shorter than this are not judged (kept)", min=0)
    low_accuracy: bool = opt(False, "lingua's low-accuracy mode: trigram models only, faster and lighter, but it reads "
                                    "short English exchanges as Swedish, German or French")


def _language(code: str):
    from lingua import IsoCode639_1, Language

    try:
        return Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))
    except (AttributeError, ValueError):
        raise ConfigError(f"curate.language: {code!r} is not an ISO 639-1 code lingua knows "
                          f"(e.g. en, de, fr, es, zh)") from None


@lru_cache(maxsize=4)
def detector(among: tuple[str, ...], low_accuracy: bool):
    from lingua import LanguageDetectorBuilder

    builder = LanguageDetectorBuilder.from_languages(*map(_language, among)) if among else \
        LanguageDetectorBuilder.from_all_languages()
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


def apply(records, options, env) -> StepResult:
    keep = {_language(code) for code in options.languages}
    among = tuple(sorted(set(options.detect_among) | set(options.languages))) if options.detect_among else ()
    found = detector(among, options.low_accuracy)
    judged = [(i, row_text(r.row)) for i, r in enumerate(records)]
    judged = [(i, text) for i, text in judged if len(text) >= options.min_chars]
    languages = found.detect_languages_in_parallel_of([text for _, text in judged])
    verdicts = {i: language for (i, _), language in zip(judged, languages)}
    result = StepResult(kept=[], notes={"languages": list(options.languages)}, counts={"judged": len(judged)})
    for i, record in enumerate(records):
        language = verdicts.get(i, "short")
        if language != "short" and language not in keep:
            name = language.iso_code_639_1.name.lower() if language is not None else "unknown"
            result.removed.append(Removed(record, STEP, "language", f"detected {name}"))
        else:
            result.kept.append(record)
    return result

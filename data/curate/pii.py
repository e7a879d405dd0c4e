"""Personal data: e-mail addresses, phone numbers, IP addresses and card numbers, masked or dropped.

Regular expressions, checked further where a pattern alone misleads: a card number is 13-19 digits (spaces or
dashes between groups allowed) that pass the Luhn check; an IPv4 address has four parts of 0-255; a phone number
has 7-15 digits, written with a leading + or with separators. `mask` replaces each with [EMAIL], [PHONE], [IP] or
[CARD] and keeps the row; `drop` leaves out every row that holds one. Names are not detected (that takes a named-
entity model such as presidio's; none ships offline here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from align.config import opt
from align.data.curate import StepResult, map_contents
from align.data.curate.parallel import run_rows

STEP = "pii"
KINDS = ("email", "phone", "ip", "card")

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w.])"
                   r"|(?<![\w.])\+\d{7,15}(?![\w.])")


@dataclass
class Options:
    enabled: bool = opt(True, "find e-mail addresses, phone numbers, IP addresses and card numbers")
    action: str = opt("mask", "mask them ([EMAIL], [PHONE], [IP], [CARD]) or drop the row", choices=("mask", "drop"))
    kinds: list = opt(list(KINDS), "what to look for", choices=KINDS)


def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for char in reversed(digits):
        value = int(char)
        if double:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
        double = not double
    return total % 10 == 0


def _card(match: re.Match) -> str | None:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else None


def _ip(match: re.Match) -> str | None:
    return "[IP]" if all(int(part) <= 255 for part in match.group().split(".")) else None


def _phone(match: re.Match) -> str | None:
    text = match.group()
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:
        return None
    if not (text.startswith("+") or "(" in text or re.search(r"\d[ .-]\d", text)):
        return None
    if re.fullmatch(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}", text):  # a date
        return None
    return "[PHONE]"


FINDERS = {  # in this order: a card number is not also read as a phone number, an IP address not as one either
    "email": (EMAIL, lambda m: "[EMAIL]"),
    "card": (CARD, _card),
    "ip": (IPV4, _ip),
    "ipv6": (IPV6, lambda m: "[IP]"),
    "phone": (PHONE, _phone),
}


def scrub(text: str, kinds) -> tuple[str, dict[str, int]]:
    """The text with each piece of personal data of `kinds` masked, and how many of each were found."""
    found: dict[str, int] = {}
    for name, (pattern, replace) in FINDERS.items():
        kind = "ip" if name == "ipv6" else name
        if kind not in kinds:
            continue

        def substitute(match, kind=kind, replace=replace):
            mask = replace(match)
            if mask is None:
                return match.group()
            found[kind] = found.get(kind, 0) + 1
            return mask

        text = pattern.sub(substitute, text)
    return text, found


def pii_row(row: dict, options: dict):
    found: dict[str, int] = {}

    def mask(text):
        new, counts = scrub(text, options["kinds"])
        for kind, n in counts.items():
            found[kind] = found.get(kind, 0) + n
        return new

    new = map_contents(row, mask)
    if not found:
        return row, "", "", False
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(found.items()))
    if options["action"] == "drop":
        return None, "personal_data", detail, False
    return new, "", detail, True


def apply(records, options, env) -> StepResult:
    settings = {"kinds": list(options.kinds), "action": options.action}
    result = run_rows(records, pii_row, settings, STEP, num_proc=env.num_proc, progress=env.progress)
    result.notes = {"action": options.action, "kinds": list(options.kinds)}
    if options.action == "mask":
        result.counts["rows_masked"] = result.changed
    return result

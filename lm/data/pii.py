"""PII scrubbing: find and replace e-mail addresses, phone numbers, IP addresses, card
numbers and US social security numbers in text, before tokenisation.

Each detector is a regular expression plus, where the pattern alone over-matches, a
validity check from a library or a standard: IPv4/IPv6 candidates must parse with
`ipaddress`; card candidates must be 13-19 digits that pass the Luhn check (ISO/IEC
7812); SSNs must have a possible area/group/serial (no 000, 666, 9xx area, 00 group,
0000 serial). Phone numbers need separators or a leading `+` (a bare 10-digit run is
too often something else), and 10-15 digits (E.164's limit is 15).

Overlapping matches are resolved by the order of `TYPES` (an e-mail wins over the IP
or phone number inside it), then by length. `scrub` replaces each match with
`[TYPE]`; `pii_counts` gives the per-type counts the corpus statistics report.
"""

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

from lm.errors import UserError

# Priority order for overlapping matches.
TYPES = ("email", "ipv6", "card", "ssn", "phone", "ipv4")

_NOT_WORDISH = r"(?<![\w.@+-])"  # a match may not continue a longer token on the left
_END = r"(?![\w@]|[.-]\w)"  # ... nor on the right ("1.2.3.4.5", "555-123-4567-8")

_PATTERNS = {
    "email": re.compile(
        r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
        r"[A-Za-z]{2,24}(?![\w-])"),
    # Loose: hex groups and colons; `ipaddress` decides.
    "ipv6": re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|"
                       r"(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"),
    # 13-19 digits, optionally in groups split by single spaces or dashes.
    "card": re.compile(_NOT_WORDISH + r"\d(?:[ -]?\d){12,18}" + _END),
    "ssn": re.compile(_NOT_WORDISH + r"\d{3}-\d{2}-\d{4}" + _END),
    # +CC then groups, or (AAA) / AAA then groups; separators space, dot or dash.
    "phone": re.compile(
        _NOT_WORDISH + r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}"
        r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
        r"|\d{3}[ .-]\d{3}[ .-]\d{4})" + _END),
    "ipv4": re.compile(_NOT_WORDISH + r"(?:\d{1,3}\.){3}\d{1,3}" + _END),
}


def luhn_valid(digits: str) -> bool:
  """The Luhn (mod 10) check of ISO/IEC 7812 card numbers: double every second digit
  from the right, subtract 9 from results over 9, the sum must end in 0."""
  if not digits.isdigit():
    return False
  total = 0
  for i, ch in enumerate(reversed(digits)):
    d = int(ch)
    if i % 2 == 1:
      d = d * 2 - 9 if d > 4 else d * 2
    total += d
  return total % 10 == 0


def _digits(text: str) -> str:
  return re.sub(r"\D", "", text)


def _valid(kind: str, text: str) -> bool:
  if kind == "ipv6":
    try:
      ipaddress.IPv6Address(text)
    except ValueError:
      return False
    return True
  if kind == "ipv4":
    try:
      ipaddress.IPv4Address(text)
    except ValueError:
      return False
    return True
  if kind == "card":
    digits = _digits(text)
    # Mixed separators ("4111 1111-1111") are not how cards are written.
    return 13 <= len(digits) <= 19 and len(set(re.findall(r"[ -]", text))) <= 1 and luhn_valid(
        digits)
  if kind == "ssn":
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"
  if kind == "phone":
    return 10 <= len(_digits(text)) <= 15
  return True


@dataclasses.dataclass(frozen=True)
class Match:
  kind: str
  start: int
  end: int
  text: str


def find_pii(text: str, types: Iterable[str] = TYPES) -> list[Match]:
  """Non-overlapping validated matches, in text order."""
  types = tuple(types)
  unknown = sorted(set(types) - set(TYPES))
  if unknown:
    raise UserError(f"unknown PII type {unknown[0]!r}; known: {list(TYPES)}")
  candidates = []
  for rank, kind in enumerate(t for t in TYPES if t in types):
    for m in _PATTERNS[kind].finditer(text):
      if _valid(kind, m.group()):
        candidates.append((rank, -(m.end() - m.start()), m.start(), Match(kind, m.start(), m.end(),
                                                                          m.group())))
  taken, chosen = [], []
  for *_, match in sorted(candidates, key=lambda c: c[:3]):
    if all(match.end <= s or match.start >= e for s, e in taken):
      taken.append((match.start, match.end))
      chosen.append(match)
  return sorted(chosen, key=lambda m: m.start)


def placeholder(kind: str) -> str:
  return f"[{kind.upper()}]"


def scrub(text: str, types: Iterable[str] = TYPES) -> tuple[str, dict[str, int]]:
  """The text with every match replaced by `[TYPE]`, and the per-type counts."""
  pieces, counts, pos = [], dict.fromkeys(TYPES, 0), 0
  for m in find_pii(text, types):
    pieces += [text[pos:m.start], placeholder(m.kind)]
    counts[m.kind] += 1
    pos = m.end
  pieces.append(text[pos:])
  return "".join(pieces), counts


def pii_counts(docs: Iterable[str]) -> dict[str, int]:
  """Per-type match counts over documents (the corpus statistics' `pii` entry)."""
  counts = dict.fromkeys(TYPES, 0)
  for doc in docs:
    for m in find_pii(doc):
      counts[m.kind] += 1
  counts["total"] = sum(counts.values())
  return counts

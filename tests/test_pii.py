"""PII filter (lm/data/pii.py): precision and recall on a hand-labelled table of positive
and negative examples, the Luhn check against published test numbers, scrubbing, and the
per-type counts in the corpus statistics."""

import pytest

from lm.data import pii
from lm.data.stats import corpus_stats
from lm.errors import UserError

# (text, the PII it contains as (type, exact substring)), labelled by hand. The last rows
# of each group are hard cases: some are missed or over-matched on purpose, so the
# measured precision/recall below are what the filter really does on this table.
TABLE = [
    # e-mail
    ("write to jane.doe@example.com today", [("email", "jane.doe@example.com")]),
    ("Contact: J_Smith+news@mail.co.uk.", [("email", "J_Smith+news@mail.co.uk")]),
    ("<bob-99@sub.domain.org>", [("email", "bob-99@sub.domain.org")]),
    ("git@github:org/repo.git is an scp path, not an address", []),
    ("the handle @example and user@localhost", []),
    ("jane dot doe at example dot com", [("email", "jane dot doe at example dot com")]),  # missed
    # phone
    ("call (555) 123-4567 now", [("phone", "(555) 123-4567")]),
    ("call 555-123-4567 or 555.987.6543", [("phone", "555-123-4567"), ("phone", "555.987.6543")]),
    ("UK office: +44 20 7946 0958", [("phone", "+44 20 7946 0958")]),
    ("Berlin +49 30 12345678, Paris +33 1 42 68 53 00",
     [("phone", "+49 30 12345678"), ("phone", "+33 1 42 68 53 00")]),
    ("US +1 (555) 010-9999", [("phone", "+1 (555) 010-9999")]),
    ("in 1603-1604 the plague; act 3-4-5", []),
    ("a date 2023-01-15 and a time 12:30:45", []),
    ("5551234567", [("phone", "5551234567")]),  # missed: no separators
    # IP addresses
    ("server at 192.168.1.20, gateway 10.0.0.1",
     [("ipv4", "192.168.1.20"), ("ipv4", "10.0.0.1")]),
    ("bad 256.1.1.1 and 1.2.3 and 1.2.3.4.5", []),
    ("IPv6 2001:db8:85a3::8a2e:370:7334 ok", [("ipv6", "2001:db8:85a3::8a2e:370:7334")]),
    ("loopback ::1 and fe80::1ff:fe23:4567:890a",
     [("ipv6", "::1"), ("ipv6", "fe80::1ff:fe23:4567:890a")]),
    ("ratio 3:4 at 10:30 and a:b:c", []),
    ("version 1.2.3.4 released", []),  # over-matched: a valid IPv4 address to the parser
    # cards (Luhn-valid test numbers published by the card networks)
    ("visa 4111 1111 1111 1111", [("card", "4111 1111 1111 1111")]),
    ("mc 5555-5555-5555-4444 amex 378282246310005",
     [("card", "5555-5555-5555-4444"), ("card", "378282246310005")]),
    ("old visa 4222222222222", [("card", "4222222222222")]),
    ("not luhn 4111 1111 1111 1112 nor 1234567890123", []),
    ("order 1234 5678 9012 3456 shipped", []),  # Luhn-invalid
    # SSN
    ("ssn 123-45-6789 on file", [("ssn", "123-45-6789")]),
    ("not 000-12-3456, 666-12-3456, 923-45-6789, 123-00-4567", []),
    # plain prose (Shakespeare)
    ("ROMEO: But soft, what light through yonder window breaks?", []),
    ("Act 3, Scene 2. Enter KING HENRY and 2 Lords.", []),
]


def _score(table):
  """Per-type and overall (tp, fp, fn) from exact (type, substring) matches."""
  counts = {kind: [0, 0, 0] for kind in pii.TYPES}
  for text, expected in table:
    found = [(m.kind, m.text) for m in pii.find_pii(text)]
    for item in found:
      counts[item[0]][0 if item in expected else 1] += 1
    for item in expected:
      if item not in found:
        counts[item[0]][2] += 1
  return counts


def test_precision_recall_on_the_table():
  counts = _score(TABLE)
  tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
  # 22 labelled positives; the two deliberate misses and one deliberate over-match.
  assert (tp, fp, fn) == (20, 1, 2)
  assert tp / (tp + fp) == pytest.approx(20 / 21)  # precision 0.952
  assert tp / (tp + fn) == pytest.approx(20 / 22)  # recall 0.909
  assert counts["card"] == [4, 0, 0] and counts["ssn"] == [1, 0, 0]
  assert counts["ipv6"] == [3, 0, 0]
  assert counts["ipv4"] == [2, 1, 0]
  assert counts["email"] == [3, 0, 1] and counts["phone"] == [7, 0, 1]


def test_luhn_against_published_numbers():
  for number in ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
                 "79927398713"):  # the last: Wikipedia's worked example
    assert pii.luhn_valid(number)
  for number in ("4111111111111112", "79927398710", "1234567812345678", "12a4"):
    assert not pii.luhn_valid(number)


def test_scrub_replaces_and_counts():
  text = "mail jane@example.com or call +44 20 7946 0958; card 4111-1111-1111-1111."
  scrubbed, counts = pii.scrub(text)
  assert scrubbed == "mail [EMAIL] or call [PHONE]; card [CARD]."
  assert counts == {"email": 1, "ipv6": 0, "card": 1, "ssn": 0, "phone": 1, "ipv4": 0}
  assert pii.scrub(text, types=["email"])[0] == (
      "mail [EMAIL] or call +44 20 7946 0958; card 4111-1111-1111-1111.")
  with pytest.raises(UserError, match="unknown PII type 'name'"):
    pii.scrub(text, types=["name"])


def test_corpus_stats_report_pii_counts():
  docs = ["To be or not to be.", "ip 10.0.0.1, mail a@b.io", "ssn 123-45-6789 and 10.0.0.2"]
  stats = corpus_stats(docs, ngram_sizes=(1,))
  assert stats["pii"] == {"email": 1, "ipv6": 0, "card": 0, "ssn": 1, "phone": 0, "ipv4": 2,
                          "total": 4}

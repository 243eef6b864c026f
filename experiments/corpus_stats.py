"""Corpus statistics: documents, characters, bytes, words, unique n-grams and the
effective size after exact and near-duplicate removal.

  python -m experiments.corpus_stats --input=data/tinyshakespeare.txt --format=paragraphs \
      --ngrams=1,2,3,13 [--tokenizer=WORKDIR/tokenizer.json] [--report=/tmp/stats.json] \
      [--scrubbed_output=/tmp/scrubbed.txt]

Prints (and optionally writes) a JSON object; see lm/data/stats.py.
"""

import json
import time

from absl import flags

from experiments import hygiene_cli
from lm.data.documents import FORMATS, read_documents
from lm.data.stats import corpus_stats
from lm.data.tokenizers import load_tokenizer
from lm.errors import UserError

_INPUT = flags.DEFINE_string("input", None, "Corpus.", required=True)
_FORMAT = flags.DEFINE_enum("format", "paragraphs", FORMATS, "How the corpus splits into "
                            "documents.")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "jsonl: the field holding the text.")
_NGRAMS = flags.DEFINE_list("ngrams", ["1", "2", "3", "13"], "n-gram sizes to count.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.8, "Near duplicates: estimated Jaccard >= this.")
_SHINGLE = flags.DEFINE_integer("shingle", 5, "Dedup shingle length in words.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Also count tokens of this tokenizer "
                                 "(a run's WORKDIR/tokenizer.json).")
_REPORT = flags.DEFINE_string("report", None, "Also write the JSON here.")
_SCRUBBED = flags.DEFINE_string("scrubbed_output", None, "Also write the input with PII "
                                "replaced by [TYPE] placeholders here (lm/data/pii.py).")


def _ngram_sizes() -> list[int]:
  try:
    sizes = [int(n) for n in _NGRAMS.value]
  except ValueError:
    raise UserError(f"--ngrams must be positive integers, got {','.join(_NGRAMS.value)}") from None
  if any(n < 1 for n in sizes):
    raise UserError(f"--ngrams must be positive integers, got {','.join(_NGRAMS.value)}")
  return sizes


def main():
  sizes = _ngram_sizes()
  start = time.perf_counter()
  docs = read_documents(_INPUT.value, _FORMAT.value, _TEXT_KEY.value)
  tokenizer = load_tokenizer(_TOKENIZER.value) if _TOKENIZER.value else None
  stats = corpus_stats(docs.texts, sizes, tokenizer, threshold=_THRESHOLD.value,
                       shingle=_SHINGLE.value)
  stats["seconds"] = time.perf_counter() - start
  print(json.dumps(stats, indent=1))
  if _REPORT.value:
    hygiene_cli.write_json(_REPORT.value, stats)
  if _SCRUBBED.value:
    from lm.data.corpus import read_text
    from lm.data.pii import scrub
    scrubbed, _ = scrub(read_text(_INPUT.value))
    try:
      with open(_SCRUBBED.value, "w") as f:
        f.write(scrubbed)
    except OSError as e:
      raise UserError(f"cannot write --scrubbed_output {_SCRUBBED.value}: "
                      f"{e.strerror or e}") from None


if __name__ == "__main__":
  hygiene_cli.run(main)

"""Exact and near-duplicate removal (MinHash + LSH over word shingles); writes the
cleaned corpus.

  python -m experiments.dedup --input=corpus.txt --format=paragraphs \
      --output=/tmp/corpus.dedup.txt --threshold=0.8 --report=/tmp/dedup.json

Keeps the first document of every cluster of exact (same normalised words) or near
(estimated Jaccard >= threshold over word `shingle`-grams) duplicates; see
lm/data/dedup.py and docs/reliability.md.
"""

import time

import numpy as np
from absl import flags

from experiments import hygiene_cli
from lm.data.dedup import choose_bands, deduplicate
from lm.data.documents import FORMATS, read_documents, write_documents

_INPUT = flags.DEFINE_string("input", None, "Corpus to deduplicate.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the cleaned corpus.")
_FORMAT = flags.DEFINE_enum("format", "paragraphs", FORMATS, "How the corpus splits into "
                            "documents.")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "jsonl: the field holding the text.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.8, "Near duplicates: estimated Jaccard >= this.")
_SHINGLE = flags.DEFINE_integer("shingle", 5, "Shingle length in normalised words.")
_NUM_PERM = flags.DEFINE_integer("num_perm", 128, "MinHash functions per document.")
_BANDS = flags.DEFINE_integer("bands", 0, "LSH bands (0: the most rows with 99% recall at the "
                              "threshold).")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the MinHash functions.")
_REPORT = flags.DEFINE_string("report", None, "Write a JSON report here (clusters).")


def main():
  start = time.perf_counter()
  docs = read_documents(_INPUT.value, _FORMAT.value, _TEXT_KEY.value)
  result = deduplicate(docs.texts, _THRESHOLD.value, _SHINGLE.value, _NUM_PERM.value,
                       _BANDS.value, _SEED.value)
  seconds = time.perf_counter() - start
  keep = np.flatnonzero(result.keep).tolist()
  chars = sum(map(len, docs.texts))
  bands = _BANDS.value or choose_bands(_NUM_PERM.value, _THRESHOLD.value)[0]
  print(f"{len(docs)} documents: {result.num_exact_duplicates} exact and "
        f"{result.num_near_duplicates} near duplicates removed, {len(keep)} kept "
        f"({_NUM_PERM.value} hashes, {bands} bands); "
        f"{hygiene_cli.megabytes_per_second(chars, seconds)}")
  if _OUTPUT.value:
    write_documents(docs, keep, _OUTPUT.value)
    print(f"cleaned corpus written to {_OUTPUT.value}")
  if _REPORT.value:
    removed = np.flatnonzero(~result.keep)
    clusters = {}
    for i in removed.tolist():
      clusters.setdefault(int(result.cluster[i]), []).append(i)
    hygiene_cli.write_json(_REPORT.value, {
        "documents": len(docs), "kept": len(keep),
        "exact_duplicates": result.num_exact_duplicates,
        "near_duplicates": result.num_near_duplicates, "seconds": seconds,
        "clusters": [{"kept": k, "removed": v} for k, v in sorted(clusters.items())]})
    print(f"report written to {_REPORT.value}")


if __name__ == "__main__":
  hygiene_cli.run(main)

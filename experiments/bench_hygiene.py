"""Throughput of the data hygiene tools on ~100 MB of text.

  python -m experiments.bench_hygiene --size_mb=100 --workdir=/tmp/hygiene_bench

Builds the corpus from tiny Shakespeare (not committed: it is regenerated in a
few seconds): each paragraph repeated with perturbations, a third unchanged
(exact duplicates), a third with one word replaced (near duplicates), a third
with 15% of its words replaced (distinct). The eval set is 1,000 lines, half
taken from Shakespeare (dirty) and half random word salad (clean). Each tool
runs once in this process; the figures go in docs/reliability.md.
"""

import json
import os
import resource
import time

import numpy as np
from absl import flags

from experiments import hygiene_cli
from lm.data.contamination import check_contamination
from lm.data.dedup import deduplicate
from lm.data.documents import read_documents
from lm.data.stats import corpus_stats
from lm.errors import UserError

_SIZE_MB = flags.DEFINE_float("size_mb", 100.0, "Corpus size to generate, in MB.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/hygiene_bench", "Where the corpus is written.")
_SOURCE = flags.DEFINE_string("source", "data/tinyshakespeare.txt", "Text to perturb.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the perturbations.")


def _perturb(words: list[str], rate: float, rng, vocab: list[str]) -> list[str]:
  words = list(words)
  for j in np.flatnonzero(rng.random(len(words)) < rate):
    words[j] = vocab[rng.integers(len(vocab))]
  return words


def make_corpus(source: str, size_mb: float, seed: int) -> tuple[list[str], list[str]]:
  """(documents of ~size_mb MB, eval lines)."""
  rng = np.random.default_rng(seed)
  paragraphs = read_documents(source, "paragraphs").texts
  vocab = sorted({w for p in paragraphs for w in p.split()})
  docs, size = [], 0
  while size < size_mb * 1e6:
    for p in paragraphs:
      kind = rng.integers(3)
      if kind == 0:
        doc = p
      else:
        words = p.split(" ")
        rate = 0.15 if kind == 2 else 1.0 / max(len(words), 1)
        doc = " ".join(_perturb(words, rate, rng, vocab))
      docs.append(doc)
      size += len(doc) + 2
  lines = [line for line in "\n".join(paragraphs).split("\n") if len(line.split()) >= 6]
  dirty = [lines[i] for i in rng.choice(len(lines), 500, replace=False)]
  clean = [" ".join(vocab[i] for i in rng.integers(len(vocab), size=12)) for _ in range(500)]
  return docs, dirty + clean


def _timed(fn):
  """(result, wall seconds, CPU seconds of this process): the machine may be shared."""
  start, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, (time.perf_counter() - start, time.process_time() - cpu)


def main():
  if _SIZE_MB.value <= 0:
    raise UserError(f"--size_mb must be positive, got {_SIZE_MB.value}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  docs, evaluation = make_corpus(_SOURCE.value, _SIZE_MB.value, _SEED.value)
  path = os.path.join(_WORKDIR.value, "corpus.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n\n".join(docs) + "\n")
  megabytes = os.path.getsize(path) / 1e6
  print(f"corpus: {path}, {megabytes:.1f} MB, {len(docs):,} paragraphs")

  read, read_s = _timed(lambda: read_documents(path, "paragraphs"))
  contamination, contamination_s = _timed(lambda: check_contamination(read.texts, evaluation))
  dedup, dedup_s = _timed(lambda: deduplicate(read.texts))
  stats, stats_s = _timed(lambda: corpus_stats(read.texts, (1, 13)))
  rows = [("read paragraphs", read_s, ""),
          ("contamination (13-grams, 1,000 eval lines)", contamination_s,
           f"{int(contamination.dirty[:500].sum())}/500 planted dirty, "
           f"{int(contamination.dirty[500:].sum())}/500 random dirty"),
          ("dedup (exact + MinHash 128, LSH 21x6)", dedup_s,
           f"{dedup.num_exact_duplicates:,} exact + {dedup.num_near_duplicates:,} near removed, "
           f"{int(dedup.keep.sum()):,} kept"),
          ("corpus_stats (1- and 13-grams + dedup)", stats_s,
           f"effective size {stats['dedup']['effective_fraction']:.1%} of "
           f"{stats['words']:,} words")]
  print("| step | wall s | CPU s | MB/s (wall) | result |\n| --- | --- | --- | --- | --- |")
  for name, (wall, cpu), note in rows:
    print(f"| {name} | {wall:.1f} | {cpu:.1f} | {megabytes / wall:.1f} | {note} |")
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"peak resident memory: {peak_mb:,.0f} MB")
  hygiene_cli.write_json(os.path.join(_WORKDIR.value, "bench.json"), {
      "megabytes": megabytes, "documents": len(docs), "peak_rss_mb": peak_mb,
      "seconds": {name: seconds for name, seconds, _ in rows}})
  print(json.dumps(stats["ngrams"]))


if __name__ == "__main__":
  hygiene_cli.run(main)

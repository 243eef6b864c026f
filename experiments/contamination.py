"""Test-set contamination check (GPT-3 style n-gram overlap) between a training corpus
and an evaluation set, with the clean subset written out.

  python -m experiments.contamination --train=data/tinyshakespeare.txt \
      --eval=/path/eval.jsonl --eval_format=jsonl --n=13 \
      --report=/tmp/contamination.json --clean=/tmp/eval_clean.jsonl

An example is dirty when one of its normalised word n-grams (or, if it is shorter
than n words, its whole text) occurs in the training corpus; see
lm/data/contamination.py and docs/reliability.md.
"""

import time

from absl import flags

from experiments import hygiene_cli
from lm.data.contamination import check_contamination, gpt3_ngram_length
from lm.data.documents import FORMATS, read_documents, write_documents
from lm.errors import UserError

_TRAIN = flags.DEFINE_string("train", None, "Training corpus.", required=True)
_EVAL = flags.DEFINE_string("eval", None, "Evaluation set.", required=True)
_TRAIN_FORMAT = flags.DEFINE_enum("train_format", "file", FORMATS,
                                  "How the training corpus splits into documents.")
_EVAL_FORMAT = flags.DEFINE_enum("eval_format", "lines", FORMATS,
                                 "How the evaluation set splits into examples.")
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "jsonl: the field holding the text.")
_N = flags.DEFINE_string("n", "13", "n-gram length in normalised words, or 'auto': GPT-3's "
                         "5th percentile of eval example lengths, clipped to [8, 13].")
_MAX_TRAIN_DOCS = flags.DEFINE_integer(
    "max_train_docs", 0, "Ignore n-grams found in more training documents than this "
    "(GPT-3: 10); 0 = off.", lower_bound=0)
_REPORT = flags.DEFINE_string("report", None, "Write a JSON report here (per-example results).")
_CLEAN = flags.DEFINE_string("clean", None, "Write the clean examples here, in eval_format.")


def _ngram_length(eval_texts: list[str]) -> int:
  if _N.value == "auto":
    return gpt3_ngram_length(eval_texts)
  if not _N.value.isdigit() or int(_N.value) < 1:
    raise UserError(f"--n must be a positive integer or 'auto', got {_N.value!r}")
  return int(_N.value)


def main():
  start = time.perf_counter()
  train = read_documents(_TRAIN.value, _TRAIN_FORMAT.value, _TEXT_KEY.value)
  evaluation = read_documents(_EVAL.value, _EVAL_FORMAT.value, _TEXT_KEY.value)
  n = _ngram_length(evaluation.texts)
  result = check_contamination(train.texts, evaluation.texts, n, _MAX_TRAIN_DOCS.value)
  seconds = time.perf_counter() - start
  dirty = int(result.dirty.sum())
  summary = {"n": n, "eval_examples": len(evaluation), "dirty": dirty,
             "clean": len(evaluation) - dirty, "dirty_fraction": result.dirty_fraction,
             "train_documents": len(train), "train_characters": sum(map(len, train.texts)),
             "seconds": seconds}
  print(f"{dirty} of {len(evaluation)} eval examples ({100 * result.dirty_fraction:.1f}%) share "
        f"a {n}-gram with the training corpus; checked "
        f"{hygiene_cli.megabytes_per_second(summary['train_characters'], seconds)}")
  for i in result.dirty.nonzero()[0][:10].tolist():
    print(f"  dirty #{i}: {result.overlap[i]}/{result.num_grams[i]} grams, first: "
          f"{result.overlap_text(evaluation.texts[i], i)!r}")
  if _CLEAN.value:
    write_documents(evaluation, result.clean_indices, _CLEAN.value)
    print(f"clean subset ({summary['clean']} examples) written to {_CLEAN.value}")
  if _REPORT.value:
    examples = [{"index": i, "words": int(result.num_words[i]), "grams": int(result.num_grams[i]),
                 "overlapping_grams": int(result.overlap[i]), "dirty": bool(result.dirty[i]),
                 "first_overlap": result.overlap_text(evaluation.texts[i], i)}
                for i in range(len(evaluation))]
    hygiene_cli.write_json(_REPORT.value, {"summary": summary, "examples": examples})
    print(f"report written to {_REPORT.value}")


if __name__ == "__main__":
  hygiene_cli.run(main)

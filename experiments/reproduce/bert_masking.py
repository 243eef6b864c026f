"""BERT's pretraining statistics, counted on the batches the mlm_nsp task really feeds.

  python -m experiments.reproduce.bert_masking [--batches=400 --out=FILE]

Devlin et al. 2019 (sec. 3.1, appendix A.1): 15% of the tokens are selected for the MLM;
of those 80% become [MASK], 10% a random token, 10% stay; sentence B is the true next
sentence half of the time. A random replacement can draw the original token (probability
1/V for the V base tokens), so the expected "unchanged" share is 0.1 + 0.1/V.
"""

import argparse
import tempfile

from configs import bert_shakespeare
from experiments.reproduce.common import hardware, write_result
from lm.config import from_dict
from lm.tasks import build_task


def measure(num_batches: int) -> dict:
  config = from_dict(bert_shakespeare.get_config().to_dict())
  with tempfile.TemporaryDirectory() as workdir:
    config, task = build_task(config, workdir)
  tok = task.tokenizer
  base_vocab = config.model.vocab_size - 4  # [PAD] [CLS] [SEP] [MASK] follow the base vocab
  mask_id = base_vocab + 3
  counts = dict(maskable=0, selected=0, masked=0, unchanged=0, random=0, pairs=0, is_next=0)
  iterator = iter(task.train_iter)
  for _ in range(num_batches):
    b = next(iterator)
    maskable = b["valid"].astype(bool) & (b["mlm_targets"] < base_vocab)
    selected = b["mlm_weights"] > 0
    counts["maskable"] += int(maskable.sum())
    counts["selected"] += int(selected.sum())
    counts["masked"] += int((selected & (b["tokens"] == mask_id)).sum())
    counts["unchanged"] += int((selected & (b["tokens"] == b["mlm_targets"])).sum())
    counts["random"] += int((selected & (b["tokens"] != mask_id)
                             & (b["tokens"] != b["mlm_targets"])).sum())
    counts["pairs"] += len(b["nsp_labels"])
    counts["is_next"] += int((b["nsp_labels"] == 0).sum())
  sel = counts["selected"]
  return {
      "hardware": hardware(), "batches": num_batches, "base_vocab_size": base_vocab,
      "tokenizer": tok.kind, "counts": counts,
      "selected_fraction": sel / counts["maskable"],
      "mask_fraction": counts["masked"] / sel,
      "random_fraction": counts["random"] / sel,
      "unchanged_fraction": counts["unchanged"] / sel,
      "is_next_fraction": counts["is_next"] / counts["pairs"],
      "expected": {"selected_fraction": 0.15, "mask_fraction": 0.8,
                   "random_fraction": 0.1 * (1 - 1 / base_vocab),
                   "unchanged_fraction": 0.1 + 0.1 / base_vocab, "is_next_fraction": 0.5},
  }


def _parse(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=400, help="Training batches to count.")
  parser.add_argument("--out", type=str, default="", help="Results JSON (default results/bert_masking.json).")
  return parser.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  r = measure(args.batches)
  print(f"selected {r['selected_fraction']:.4f}, [MASK] {r['mask_fraction']:.4f}, random "
        f"{r['random_fraction']:.4f}, unchanged {r['unchanged_fraction']:.4f}, IsNext "
        f"{r['is_next_fraction']:.4f}")
  write_result("bert_masking", r, args.out)


if __name__ == "__main__":
  main()

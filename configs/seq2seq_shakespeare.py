"""Supervised seq2seq: Shakespeare lines -> Pig Latin, with a T5-style encoder-decoder.

Run:
  python -m experiments.run --config=configs/seq2seq_shakespeare.py --workdir=/tmp/s2s
Expected (measured, docs/encoder_decoder.md): val_loss 4.2 -> 0.78 after 2500 steps,
teacher-forced val_accuracy 0.75; summary.json has greedy_exact_match (0.004) and
greedy_token_accuracy (0.18) of greedily decoded held-out lines (lines of the
validation split that never occur in training). The curve has not flattened yet.

The rule (lm/tasks/seq2seq.py): a word starting with a vowel gets "way"; any other word
moves its leading consonants to the end and gets "ay"; non-letters stay:
"Romeo, thou art" -> "omeoRay, outhay artway".

Args: smoke, arch=t5|bart, rule=pig_latin|reverse_words, beam_size=K (also report
beam-search exact match at the end).
"""

import ml_collections

from configs import base
from configs.t5_shakespeare import encdec_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, arch="t5", rule="pig_latin", beam_size=0)
  task_config = {"rule": args.rule, "num_eval_lines": 64 if args.smoke else 500,
                 "beam_size": args.beam_size, "length_penalty": 0.6}
  # Lines of <= 47 characters whose Pig Latin has <= 63 (+ EOS each): 74% of the lines;
  # seq_len=64, max_len=64, max_target_len=100 keeps every line (at 1.5x the cost a step).
  return encdec_config("seq2seq", args.arch, seq_len=48, max_len=48, max_target_len=64,
                       num_steps=2500, task_config=task_config, smoke=args.smoke)

"""Supervised seq2seq: Shakespeare lines -> Pig Latin, with a BART-style encoder-decoder.

Run:
  python -m experiments.run --config=configs/seq2seq_shakespeare.py --workdir=/tmp/s2s
Expected (measured, docs/encoder_decoder.md; ~10 min on the shared 2-core CPU): val_loss
4.2 -> 0.089 after 3000 steps, teacher-forced val_accuracy 0.97; summary.json has
greedy_exact_match 0.33 (a third of the greedily decoded held-out lines, lines of the
validation split that never occur in training, are exactly right) and
greedy_token_accuracy 0.79 (position by position, so one early slip costs the rest).

The rule (lm/tasks/seq2seq.py): a word starting with a vowel gets "way"; any other word
moves its leading consonants to the end and gets "ay"; non-letters stay:
"Romeo, thou art" -> "omeoRay, outhay artway".

The default is arch=bart because copying needs absolute positions: with learned
position tables in both stacks, cross-attention can align target position t with source
position ~t; T5's relative bias (arch=t5) leaves cross-attention position-blind, and the
same 1200-step budget then gives val_accuracy 0.68 and exact match 0.002 (vs 0.86 /
0.022 with arch=bart).

Args: smoke, arch=bart|t5, rule=pig_latin|reverse_words, beam_size=K (also report
beam-search exact match at the end).
"""

import ml_collections

from configs import base
from configs.t5_shakespeare import encdec_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, arch="bart", rule="pig_latin", beam_size=0)
  task_config = {"rule": args.rule, "num_eval_lines": 64 if args.smoke else 500,
                 "beam_size": args.beam_size, "length_penalty": 0.6}
  # Lines of <= 47 characters whose Pig Latin has <= 63 (+ EOS each): 74% of the lines;
  # seq_len=64, max_len=64, max_target_len=100 keeps every line (at 1.5x the cost a step).
  return encdec_config("seq2seq", args.arch, seq_len=48, max_len=48, max_target_len=64,
                       num_steps=3000, task_config=task_config, smoke=args.smoke)

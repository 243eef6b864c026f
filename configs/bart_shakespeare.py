"""BART-style encoder-decoder pretrained by denoising on tiny Shakespeare (characters).

Run:
  python -m experiments.run --config=configs/bart_shakespeare.py --workdir=/tmp/bart
Expected (measured, docs/encoder_decoder.md): val_loss falls from ln(vocab) = 4.2 to
1.99 after 800 steps, val_accuracy 0.41 (the decoder has learned the language far more
than copying from the encoder at this budget); summary.json also has greedy_exact_match
(0.0) / greedy_token_accuracy (0.10) of the regenerated windows.

Each example is a 64-character window starting at a line start; its lines are shuffled
and 30% of its characters are masked in Poisson(3)-length spans, each span one <mask>
(lm/tasks/denoising.py); the decoder writes the original window.

Args: smoke, arch=bart|t5 (see configs/t5_shakespeare.py), permute=0 (infilling only).
"""

import ml_collections

from configs import base
from configs.t5_shakespeare import encdec_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, arch="bart", permute=True)
  seq_len = 32 if args.smoke else 64
  task_config = {"mask_ratio": 0.3, "poisson_lambda": 3.0, "permute_sentences": args.permute,
                 "num_eval_examples": 64 if args.smoke else 512}
  # Inputs and targets: the window + EOS.
  return encdec_config("denoising", args.arch, seq_len=seq_len, max_len=seq_len + 1,
                       max_target_len=seq_len + 1, num_steps=800, task_config=task_config,
                       smoke=args.smoke)

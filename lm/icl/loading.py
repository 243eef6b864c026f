"""Any trained GPT workdir back as a model to prompt (causal_lm, sft, distill, dpo,
icl_strings, ...): its config, tokenizer and the newest intact checkpoint's params.

`load_trained` (lm/workdir.py) and `load_policy` (lm/post_training/policy.py) accept a
fixed list of tasks and rebuild the whole train state; prompting needs the params only,
so any gpt-family run is accepted and the optimizer state is never read.
"""

import dataclasses
import os

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.tokenizers import load_tokenizer
from lm.errors import UserError
from lm.models.registry import build_model

DECODER_FAMILIES = ("gpt",)


@dataclasses.dataclass
class Decoder:
  config: config_lib.ExperimentConfig
  model: object
  params: object
  tokenizer: object
  step: int


def load_decoder(workdir: str) -> Decoder:
  from lm.train.checkpoint import Checkpointer

  path = os.path.join(workdir, workdir_lib.CONFIG)
  if not os.path.exists(path):
    raise UserError(f"{workdir} is not a trained workdir: {workdir_lib.CONFIG} is missing")
  config = config_lib.load_json(path)
  if config.family not in DECODER_FAMILIES:
    raise UserError(f"{workdir} holds a {config.family!r} model; in-context learning needs a "
                    f"decoder ({', '.join(DECODER_FAMILIES)})")
  checkpointer = Checkpointer(workdir, create=False)
  if checkpointer.latest_step() is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints: train it first")
  params, step = checkpointer.restore_params()
  checkpointer.close()
  tokenizer = load_tokenizer(os.path.join(workdir, workdir_lib.TOKENIZER))
  return Decoder(config, build_model(config.family, config.model), params, tokenizer, step)

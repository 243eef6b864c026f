"""The adaptation methods as (model options, trainable patterns, learning rate) presets.

Each is what its paper trains, on top of a frozen pretrained model; sizes are picked so
every lightweight method stays under 1% of the default char GPT's parameters
(configs/shakespeare_char.py: 4 layers, d = 128; tests/test_adaptation.py counts them).
A task head (the classifier's `head/`) always trains as well.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  model: dict  # PEFT fields of the model config (lm/layers/peft.py)
  trainable: tuple[str, ...]  # regexes over parameter paths; () = everything (full)
  lr: float  # peak learning rate
  families: tuple[str, ...] = ("gpt", "bert")


METHODS = {
    # Full fine-tuning: every weight, with a 10x smaller learning rate than pretraining.
    "full": Method({}, (), 1e-4),
    # LoRA on the query and value projections (Hu et al.'s default), rank 2, alpha 8.
    "lora": Method({"lora_rank": 2, "lora_alpha": 8.0, "lora_targets": "query,value"},
                   ("lora_",), 3e-3),
    # Prefix tuning: 4 keys/values per layer through a width-4 reparameterisation MLP.
    "prefix": Method({"prefix_len": 4, "prefix_hidden": 4}, ("prefix/",), 3e-3),
    # Prompt tuning: 8 soft-prompt embeddings (decoder only: they are prepended to the input).
    "prompt": Method({"prompt_len": 8}, ("soft_prompt",), 3e-2, families=("gpt",)),
    # Houlsby adapters of width 2 after every attention and MLP sublayer.
    "adapters": Method({"adapter_dim": 2}, ("adapter_",), 3e-3),
    # BitFit: every bias term (attention, MLP and LayerNorm biases).
    "bitfit": Method({}, ("/bias$",), 3e-3),
    # Only the task head on frozen features (a probe trained by SGD with the rest).
    "head": Method({}, (), 3e-3),
}


def method(name: str, family: str) -> Method:
  from lm.errors import UserError
  if name not in METHODS:
    raise UserError(f"unknown adaptation method {name!r}; known: {sorted(METHODS)}")
  m = METHODS[name]
  if family not in m.families:
    raise UserError(f"method {name} supports the families {m.families}, not {family!r}")
  return m

"""Training tasks by name: `task -> (task config dataclass, builder)`.

A builder is `build(config, workdir) -> (config, Task)`: it reads the data, builds or
reloads the tokenizer, fills in what the config leaves to the data (the vocab size)
and returns the `lm.train.task.Task` the training loop runs.
"""

import importlib

from lm.errors import UserError

# name -> (module, config class name); imported lazily so lm.config stays light.
_TASKS = {
    "causal_lm": ("lm.tasks.causal_lm", "CausalLMConfig"),
    "mlm_nsp": ("lm.tasks.mlm_nsp", "MLMNSPConfig"),  # BERT: masked LM + next sentence
    "tbptt_lm": ("lm.tasks.tbptt_lm", "TBPTTConfig"),  # recurrent models, carried state
    # GPT + multi-token prediction and MoE balancing (DeepSeek-V3); moe_lm = depth 0
    "mtp_lm": ("lm.tasks.mtp_lm", "MTPConfig"),
    "moe_lm": ("lm.tasks.mtp_lm", "MoELMConfig"),
    # encoder-decoder ("encdec" family): T5 span corruption, BART denoising, supervised pairs
    "span_corruption": ("lm.tasks.span_corruption", "SpanCorruptionConfig"),
    "denoising": ("lm.tasks.denoising", "DenoisingConfig"),
    "seq2seq": ("lm.tasks.seq2seq", "Seq2SeqConfig"),
    # post-training on the decoder family (docs/post_training.md)
    "sft": ("lm.tasks.sft", "SFTConfig"),  # prompt/response, prompt masked, packed
    "distill": ("lm.tasks.distill", "DistillConfig"),  # student <- teacher workdir's logits
    "dpo": ("lm.tasks.dpo", "DPOConfig"),  # preference pairs, frozen reference
    # in-context learning: rows of one string task's examples (docs/icl.md)
    "icl_strings": ("lm.tasks.icl_strings", "ICLStringsConfig"),
    # images and text (docs/multimodal.md), on the synthetic shapes captions
    "clip": ("lm.tasks.clip", "CLIPTaskConfig"),  # contrastive dual encoder ("clip" family)
    "captioning": ("lm.tasks.captioning", "CaptioningConfig"),  # ViT + text decoder ("caption")
    "image_classify": ("lm.tasks.image_classify", "ImageClassifyConfig"),  # ViT, 16 classes
    # adapting a pretrained backbone (docs/adaptation.md): a head on pooled features
    "classify": ("lm.tasks.classify", "ClassifyConfig"),  # who speaks this line
}


def task_names() -> list[str]:
  return sorted(_TASKS)


def _module(name: str):
  if name not in _TASKS:
    raise UserError(f"unknown task {name!r}; known: {task_names()}")
  return importlib.import_module(_TASKS[name][0])


def task_config_class(name: str):
  return getattr(_module(name), _TASKS[name][1])


def build_task(config, workdir: str):
  return _module(config.task).build(config, workdir)


def task_state_factory(config):
  """The task's own `(model, params, tx) -> train state`, or None for the standard one."""
  factory = getattr(_module(config.task), "state_factory", None)
  return factory(config) if factory is not None else None

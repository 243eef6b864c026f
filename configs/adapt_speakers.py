"""Adapting a pretrained model to speaker classification ("who speaks this line?").

First pretrain a backbone, e.g. the default char GPT or the BERT config:
  python -m experiments.run --config=configs/shakespeare_char.py --workdir=/tmp/gpt
then fine-tune it with one method (the base stays untouched):
  python -m experiments.run --config=configs/adapt_speakers.py:method=lora,init_from=/tmp/gpt \
      --workdir=/tmp/gpt_lora
summary.json: val_accuracy (8 balanced speakers: chance 0.125), trainable_params and
trainable_fraction; adapter.safetensors holds the trained part alone. Measured numbers
for every method are in docs/adaptation.md (configs/adaptation_table.py).

Args: method=full|lora|prefix|prompt|adapters|bitfit|head (lm/adapt/methods.py),
init_from=DIR (a gpt or bert workdir: its model section and tokenizer are used;
without it, family=gpt|bert trains from scratch), pooling=last|mean (gpt) or cls|mean (bert), steps=N, smoke.
"""

import json
import os

import ml_collections

from configs import base
from lm.adapt.methods import method as get_method
from lm.layers.peft import PEFTFields

SEQ_LEN = {"gpt": 48, "bert": 56}  # 99% of lines have <= 53 characters


def _backbone_config(init_from: str, family: str) -> dict:
  """The pretrained run's config; without init_from, the family's default (from scratch)."""
  if init_from:
    path = os.path.join(init_from, "config.json")
    if not os.path.exists(path):
      raise ValueError(f"init_from={init_from}: {path} does not exist (train the backbone first)")
    with open(path) as f:
      return json.load(f)
  if family not in SEQ_LEN:
    raise ValueError(f"family={family!r}; choose one of {sorted(SEQ_LEN)}")
  from configs import bert_shakespeare, shakespeare_char
  config = shakespeare_char.recipe() if family == "gpt" else bert_shakespeare.get_config()
  return config.to_dict()


def adapted(pretrained: dict, method: str, init_from: str, steps: int, smoke: bool,
            head: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """The sections every adaptation config shares: the pretrained model with the method's
  PEFT options, its trainable patterns (plus a task `head`), optimizer and schedule."""
  family = pretrained["family"]
  m = get_method(method, family)
  if method == "head" and not head:
    raise ValueError("method=head needs a task head (the classification task has one)")
  c = ml_collections.ConfigDict()
  c.kind = "train_lm"
  c.family = family
  c.init_from = init_from
  c.trainable = tuple(head if method == "head" else m.trainable + head if m.trainable else ())
  c.data = ml_collections.ConfigDict(pretrained["data"])
  model = {**vars(PEFTFields()), **pretrained["model"], **m.model}
  model["dropout"] = 0.0 if family == "gpt" else model.get("dropout", 0.1)
  c.model = ml_collections.ConfigDict(model)
  c.optim = base.optim(lr=m.lr, min_lr=m.lr / 10, warmup_steps=50, weight_decay=0.0)
  c.train = base.train(num_steps=steps, log_every=50, eval_every=200, checkpoint_every=steps,
                       keep_checkpoints=1)
  c.sample = ml_collections.ConfigDict(pretrained.get("sample", {}))
  c.sharding = base.sharding()
  if smoke:
    c.optim.warmup_steps = 2
    c.train.num_steps = 20
    c.train.log_every = 10
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = base.parse_arg(arg, smoke=False, method="lora", init_from="", family="gpt",
                        pooling="", steps=600)
  pretrained = _backbone_config(args.init_from, args.family)
  c = adapted(pretrained, args.method, args.init_from, args.steps, args.smoke, head=("^head/",))
  c.task = "classify"
  c.task_config = ml_collections.ConfigDict(dict(num_speakers=8, val_fraction=0.2,
                                                 pooling=args.pooling, split_seed=0))
  # A soft prompt takes the first prompt_len positions of the model's position table.
  c.data.seq_len = min(SEQ_LEN[c.family], c.model.max_len - c.model.prompt_len)
  c.data.batch_size = 8 if args.smoke else 32
  c.data.eval_batch_size = 64 if args.smoke else 128
  return c

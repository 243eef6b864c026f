"""Sequence classification with a pretrained backbone: "who speaks this line?".

The data is lm/data/speakers.py's balanced speaker-classification split of a play. A
`Classifier` puts a linear head on pooled features of any encoder or decoder:
  gpt   last (the final real token's hidden state, which has seen the whole line) or
        mean over the real tokens, after the final norm;
  bert  cls (the pooler's tanh(W h_[CLS]), which NSP pretraining trained) or mean.
The params are {"backbone": <the family's params>, "head": ...}, so `config.init_from`
fills the backbone from a pretrained workdir and `config.trainable` picks what trains
(docs/adaptation.md). Metrics: cross-entropy and accuracy per line.

Legend: B batch, T tokens, D model dim, C classes.
"""

import dataclasses
import os

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import workdir as workdir_lib
from lm.data.corpus import read_text
from lm.data.speakers import speaker_splits
from lm.data.tokenizers import build_tokenizer, load_tokenizer
from lm.errors import UserError
from lm.layers import init
from lm.tasks.causal_lm import with_vocab
from lm.train.task import Task

POOLINGS = {"gpt": ("last", "mean"), "bert": ("cls", "mean")}
EVAL_WEIGHTS = {"loss": "num_sequences", "accuracy": "num_sequences"}
_ENDLESS = 2**62


@dataclasses.dataclass(frozen=True)
class ClassifyConfig:
  num_speakers: int = 8  # classes: the speakers with the most lines
  val_fraction: float = 0.2  # of each speaker's lines (whole speeches) held out
  pooling: str = ""  # gpt: last | mean; bert: cls | mean; "" = last / cls
  split_seed: int = 0  # fixes the train/validation split

  def __post_init__(self):
    if self.num_speakers < 2 or not 0.0 < self.val_fraction < 1.0:
      raise UserError("task_config.num_speakers must be >= 2 and val_fraction in (0, 1)")


def pooling_for(family: str, pooling: str) -> str:
  if family not in POOLINGS:
    raise UserError(f"task classify supports families {sorted(POOLINGS)}, got {family!r}")
  pooling = pooling or POOLINGS[family][0]
  if pooling not in POOLINGS[family]:
    raise UserError(f"task_config.pooling={pooling!r}; the {family} family pools by one of "
                    f"{POOLINGS[family]}")
  return pooling


def masked_mean(hidden_BTD, valid_BT):
  w_BT1 = valid_BT.astype(hidden_BTD.dtype)[..., None]
  return (hidden_BTD * w_BT1).sum(1) / jnp.maximum(w_BT1.sum(1), 1.0)


def pooled_features(backbone, family: str, pooling: str, tokens_BT, valid_BT,
                    deterministic: bool = True):
  """(B, D) features of a backbone module (called inside a parent module or bound)."""
  if family == "gpt":
    hidden_BTD, _ = backbone(tokens_BT, deterministic=deterministic, return_hidden=True)
    if pooling == "last":
      last_B = jnp.maximum(valid_BT.sum(1) - 1, 0)
      return hidden_BTD[jnp.arange(tokens_BT.shape[0]), last_B]
    return masked_mean(hidden_BTD, valid_BT)
  hidden_BTD, pooled_BD = backbone.encode(tokens_BT, None, valid_BT, deterministic=deterministic)
  return pooled_BD if pooling == "cls" else masked_mean(hidden_BTD, valid_BT)


class Classifier(nn.Module):
  backbone: nn.Module  # a GPT or Bert; its params live under "backbone"
  family: str
  pooling: str
  num_classes: int

  @nn.compact
  def __call__(self, tokens_BT, valid_BT, *, deterministic: bool = True):
    features_BD = pooled_features(self.backbone, self.family, self.pooling, tokens_BT,
                                  valid_BT, deterministic)
    head = nn.Dense(self.num_classes, kernel_init=init.normal(init.DEFAULT_STDDEV,
                                                               ("embed", None)),
                    bias_init=init.zeros((None,)), name="head")
    return head(features_BD).astype(jnp.float32)


def encode_lines(texts, tokenizer, family: str, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, valid) of shape (N, seq_len): lines truncated to fit, padded at the end;
  bert lines are [CLS] line [SEP]."""
  tokens = np.zeros((len(texts), seq_len), np.int32)
  valid = np.zeros((len(texts), seq_len), bool)
  for i, text in enumerate(texts):
    ids = np.asarray(tokenizer.encode(text), np.int32)
    if family == "bert":
      ids = np.concatenate([[tokenizer.cls_id], ids[:seq_len - 2], [tokenizer.sep_id]])
      tokens[i, :] = tokenizer.pad_id
    ids = ids[:seq_len]
    tokens[i, :len(ids)] = ids
    valid[i, :len(ids)] = True
  return tokens, valid


def classify_loss(classifier: Classifier):
  """batch = {tokens, valid (B, T), labels, weights (B)}: mean cross-entropy, accuracy."""

  def loss_fn(params, batch, rng, deterministic=False):
    logits_BC = classifier.apply({"params": params}, batch["tokens"], batch["valid"],
                                 deterministic=deterministic, rngs={"dropout": rng})
    w_B = batch["weights"]
    n = jnp.maximum(w_B.sum(), 1.0)
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, batch["labels"])
    loss = (ce_B * w_B).sum() / n
    accuracy = ((jnp.argmax(logits_BC, -1) == batch["labels"]) * w_B).sum() / n
    return loss, {"loss": loss, "accuracy": accuracy, "num_sequences": w_B.sum()}

  return loss_fn


def tokenizer_for(config, workdir: str, text: str):
  """The workdir's tokenizer (else one built from `text`), with BERT's special tokens for bert."""
  path = os.path.join(workdir, workdir_lib.TOKENIZER)
  base = (load_tokenizer(path) if os.path.exists(path) else
          build_tokenizer(config.data.tokenizer, text, config.data.vocab_size))
  if config.family == "bert":
    from lm.tasks.mlm_nsp import BertTokenizer
    return BertTokenizer(base)
  return base


def eval_batches(tokens, valid, labels, batch_size: int) -> list[dict]:
  """Every example once, in batches of `batch_size` (the last padded with weight-0 rows)."""
  out = []
  for start in range(0, len(labels), batch_size):
    idx = np.arange(start, start + batch_size)
    real = idx < len(labels)
    idx = np.where(real, idx, 0)
    out.append({"tokens": tokens[idx], "valid": valid[idx], "labels": labels[idx],
                "weights": real.astype(np.float32)})
  return out


def build(config, workdir: str):
  tc, d = config.task_config, config.data
  pooling = pooling_for(config.family, tc.pooling)
  text = read_text(d.path)
  splits = speaker_splits(text, tc.num_speakers, tc.val_fraction, tc.split_seed)
  tokenizer = tokenizer_for(config, workdir, text)
  config = with_vocab(config, tokenizer.vocab_size)
  if d.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={d.seq_len} exceeds model.max_len={config.model.max_len}")
  train_tokens, train_valid = encode_lines(splits["train"][0], tokenizer, config.family,
                                           d.seq_len)
  train_labels = splits["train"][1]
  val_tokens, val_valid = encode_lines(splits["val"][0], tokenizer, config.family, d.seq_len)
  num_classes = len(splits["train"][2])

  def wrap(model) -> Classifier:
    return Classifier(model, config.family, pooling, num_classes)

  def batch(_, rng: np.random.Generator) -> dict:
    idx = rng.integers(0, len(train_labels), d.batch_size)
    return {"tokens": train_tokens[idx], "valid": train_valid[idx], "labels": train_labels[idx],
            "weights": np.ones(d.batch_size, np.float32)}

  def init_params(model, seed: int):
    dummy = jnp.zeros((1, d.seq_len), jnp.int32)
    return wrap(model).init(jax.random.key(seed), dummy, jnp.ones((1, d.seq_len), bool))["params"]

  def save_files(run_dir: str):
    tokenizer.save(os.path.join(run_dir, workdir_lib.TOKENIZER))
    with open(os.path.join(run_dir, "labels.txt"), "w") as f:
      f.write("\n".join(splits["train"][2]) + "\n")

  dataset = grain.MapDataset.range(_ENDLESS).random_map(batch, seed=d.seed)
  task = Task(
      tokenizer=tokenizer, train_iter=iter(dataset.to_iter_dataset()),
      eval_batches=eval_batches(val_tokens, val_valid, splits["val"][1], d.eval_batch_size),
      tokens_per_step=d.batch_size * d.seq_len,
      make_loss=lambda model: classify_loss(wrap(model)),
      init_params=init_params, save_files=save_files, eval_weights=EVAL_WEIGHTS,
      pretrained_at=("backbone",))
  return config, task

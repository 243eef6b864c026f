"""BERT pretraining: masked language modelling + next-sentence prediction (Devlin et al. 2019).

Sentence pairs come from consecutive lines of the corpus: a line A and, half of the time,
the line that follows it in the same speech (blank lines separate speeches; label 0,
"IsNext"), otherwise a uniformly random other line of the same split (label 1,
"NotNext"). Each example is `[CLS] A [SEP] B [SEP]` padded to `data.seq_len`, with
segment ids 0 for `[CLS] A [SEP]` and 1 for `B [SEP]` (pairs too long lose tokens from
the end of the longer sentence). Every non-special token is selected for prediction
with probability `mask_prob` (15%, independently, as Hugging Face's collator does); a
selected token becomes `[MASK]` (80%), a uniformly random vocabulary token (10%) or
stays unchanged (10%). `mlm_positions` lists each row's selected positions in a fixed
number of slots (BERT's `masked_lm_positions`), so the MLM head runs only there.

Batch i is a pure function of (data.seed, i) through grain's `random_map`, so the
iterator state is one integer and resumes exactly. Validation uses fixed pairs and
fixed masks (`task_config.eval_seed`). Metrics: mlm_loss and mlm_accuracy over the
selected tokens (`num_tokens`), nsp_loss and nsp_accuracy over the pairs (`num_pairs`);
`loss` = mlm_loss + nsp_loss.
"""

import dataclasses
import math
import os

import grain
import jax.numpy as jnp
import numpy as np
import optax

from lm import workdir as workdir_lib
from lm.data.corpus import read_text, split_text
from lm.data.tokenizers import build_tokenizer, load_tokenizer
from lm.errors import UserError
from lm.models import bert as bert_lib
from lm.tasks.causal_lm import with_vocab
from lm.train.task import Task

_ENDLESS = 2**62
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
IS_NEXT, NOT_NEXT = 0, 1  # Hugging Face's next_sentence_label convention


@dataclasses.dataclass(frozen=True)
class MLMNSPConfig:
  mask_prob: float = 0.15  # fraction of (non-special) tokens the MLM predicts
  mask_token_prob: float = 0.8  # ... of which replaced by [MASK]
  random_token_prob: float = 0.1  # ... replaced by a random token (the rest stay unchanged)
  nsp_random_prob: float = 0.5  # fraction of pairs whose sentence B is a random line
  # MLM predictions per row, BERT's max_predictions_per_seq: the head runs at these slots
  # only. 0: mask_prob * (seq_len - 3) + 5 sigma, a cap the Bernoulli selection practically
  # never reaches (a row over the cap keeps a random subset of its selected tokens).
  max_predictions: int = 0
  eval_examples: int = 2048  # validation pairs evaluated (0 = all of them)
  eval_seed: int = 1  # fixes the validation pairs and masks

  def __post_init__(self):
    for name in ("mask_prob", "nsp_random_prob"):
      if not 0.0 < getattr(self, name) < 1.0:
        raise UserError(f"task_config.{name} must be in (0, 1), got {getattr(self, name)}")
    if (min(self.mask_token_prob, self.random_token_prob) < 0
        or self.mask_token_prob + self.random_token_prob > 1.0):
      raise UserError("task_config.mask_token_prob and random_token_prob must be >= 0 and "
                      "sum to at most 1")
    if self.max_predictions < 0:
      raise UserError(f"task_config.max_predictions must be >= 0, got {self.max_predictions}")
    if self.eval_examples < 0:
      raise UserError(f"task_config.eval_examples must be >= 0, got {self.eval_examples}")


class BertTokenizer:
  """A base tokenizer (char, word or BPE) plus [PAD] [CLS] [SEP] [MASK] after its vocabulary.

  Saved as the base tokenizer: the special ids follow from its size, so reloading is exact.
  """

  def __init__(self, base):
    self.base = base
    self.base_vocab_size = base.vocab_size
    self.pad_id, self.cls_id, self.sep_id, self.mask_id = range(base.vocab_size,
                                                                base.vocab_size + 4)

  @property
  def kind(self) -> str:
    return self.base.kind

  @property
  def vocab_size(self) -> int:
    return self.base_vocab_size + len(SPECIALS)

  def encode(self, text: str) -> np.ndarray:
    return self.base.encode(text)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    parts, run = [], []
    for i in ids:
      if i >= self.base_vocab_size:
        if run:
          parts.append(self.base.decode(run))
          run = []
        parts.append(SPECIALS[i - self.base_vocab_size])
      else:
        run.append(i)
    if run:
      parts.append(self.base.decode(run))
    return "".join(parts)

  def save(self, path: str) -> None:
    self.base.save(path)


# --- sentence pairs -------------------------------------------------------------------------

def lines_and_next(text: str) -> tuple[list[str], np.ndarray]:
  """Non-blank lines, and whether each is followed by a line of the same block.

  Blocks are runs of lines between blank lines (a speech in tiny Shakespeare).
  """
  lines, has_next = [], []
  previous_blank = True
  for line in text.split("\n"):
    if not line.strip():
      previous_blank = True
      continue
    if lines and not previous_blank:
      has_next[-1] = True
    lines.append(line)
    has_next.append(False)
    previous_blank = False
  return lines, np.array(has_next, bool)


class PairSource:
  """Tokenized lines of one split and the indices that have a true next line."""

  def __init__(self, text: str, tokenizer: BertTokenizer):
    self.lines, has_next = lines_and_next(text)
    self.anchors = np.flatnonzero(has_next)
    if len(self.anchors) == 0:
      raise UserError("no two consecutive non-blank lines in this split; next-sentence "
                      "prediction needs line pairs")
    ids = [tokenizer.encode(line) for line in self.lines]
    self.offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    self.flat = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)

  def ids(self, i: int) -> np.ndarray:
    return self.flat[self.offsets[i]:self.offsets[i + 1]]

  def choose_pairs(self, anchors_B: np.ndarray, rng: np.random.Generator, random_prob: float):
    """Sentence-B line index and NSP label per anchor: the next line, or any other line."""
    n = len(self.lines)
    is_random_B = rng.random(len(anchors_B)) < random_prob
    other_B = rng.integers(0, n - 1, size=len(anchors_B))
    other_B = other_B + (other_B >= anchors_B + 1)  # skip the true next line
    b_B = np.where(is_random_B, other_B, anchors_B + 1)
    return b_B, np.where(is_random_B, NOT_NEXT, IS_NEXT).astype(np.int32)


def pack_pairs(a_list, b_list, seq_len: int, tok: BertTokenizer):
  """[CLS] A [SEP] B [SEP] [PAD]...: tokens, segment ids, validity and maskability (B, T)."""
  if seq_len < 5:
    raise UserError(f"data.seq_len={seq_len} is too short for [CLS] A [SEP] B [SEP]")
  B = len(a_list)
  tokens = np.full((B, seq_len), tok.pad_id, np.int32)
  segments = np.zeros((B, seq_len), np.int32)
  maskable = np.zeros((B, seq_len), bool)
  for r, (a, b) in enumerate(zip(a_list, b_list)):
    la, lb = len(a), len(b)
    while la + lb > seq_len - 3:  # drop from the end of the longer sentence
      if la > lb:
        la -= 1
      else:
        lb -= 1
    row = np.concatenate([[tok.cls_id], a[:la], [tok.sep_id], b[:lb], [tok.sep_id]])
    tokens[r, :len(row)] = row
    segments[r, la + 2:len(row)] = 1
    maskable[r, 1:1 + la] = True
    maskable[r, la + 2:la + 2 + lb] = True
  valid = tokens != tok.pad_id
  return tokens, segments, valid, maskable


def mask_tokens(tokens_BT, maskable_BT, rng: np.random.Generator, cfg: MLMNSPConfig,
                tok: BertTokenizer):
  """BERT's 80/10/10 corruption: (inputs, targets = the originals, weights = selected)."""
  selected = (rng.random(tokens_BT.shape) < cfg.mask_prob) & maskable_BT
  choice = rng.random(tokens_BT.shape)
  random_ids = rng.integers(0, tok.base_vocab_size, size=tokens_BT.shape, dtype=np.int32)
  inputs = np.where(choice < cfg.mask_token_prob, tok.mask_id, tokens_BT)
  inputs = np.where((choice >= cfg.mask_token_prob)
                    & (choice < cfg.mask_token_prob + cfg.random_token_prob), random_ids, inputs)
  inputs = np.where(selected, inputs, tokens_BT).astype(np.int32)
  return inputs, tokens_BT.astype(np.int32), selected.astype(np.float32)


def max_predictions(cfg: MLMNSPConfig, seq_len: int) -> int:
  """Prediction slots per row: the configured cap, or the Bernoulli count's mean + 5 sigma."""
  n = seq_len - 3  # maskable tokens in a full row
  if cfg.max_predictions:
    return min(cfg.max_predictions, n)
  mean = n * cfg.mask_prob
  return min(n, math.ceil(mean + 5 * math.sqrt(mean * (1 - cfg.mask_prob))))


def prediction_positions(weights_BT, num_slots: int, rng: np.random.Generator):
  """Positions of the selected tokens, (B, num_slots), padded with 0 ([CLS], never selected).

  A row with more selected tokens keeps a uniformly random subset; also returns the weights
  of what is kept.
  """
  B, T = weights_BT.shape
  priority_BT = np.where(weights_BT > 0, rng.random((B, T)), np.inf)
  order_BP = np.argsort(priority_BT, axis=1)[:, :num_slots]
  kept_BP = np.isfinite(np.take_along_axis(priority_BT, order_BP, 1))
  positions_BP = np.sort(np.where(kept_BP, order_BP, T), axis=1)  # kept first, in order
  positions_BP = np.where(positions_BP < T, positions_BP, 0)
  if positions_BP.shape[1] < num_slots:  # num_slots > T: pad the slots
    positions_BP = np.pad(positions_BP, ((0, 0), (0, num_slots - T)))
  kept_BT = np.zeros((B, T), bool)
  np.put_along_axis(kept_BT, order_BP, kept_BP, 1)
  return positions_BP.astype(np.int32), (weights_BT * kept_BT).astype(np.float32)


def make_batch(source: PairSource, anchors_B, rng, cfg: MLMNSPConfig, tok: BertTokenizer,
               seq_len: int) -> dict:
  b_B, labels_B = source.choose_pairs(anchors_B, rng, cfg.nsp_random_prob)
  tokens, segments, valid, maskable = pack_pairs(
      [source.ids(i) for i in anchors_B], [source.ids(j) for j in b_B], seq_len, tok)
  inputs, targets, weights = mask_tokens(tokens, maskable, rng, cfg, tok)
  positions, kept = prediction_positions(weights, max_predictions(cfg, seq_len), rng)
  inputs = np.where(weights > kept, targets, inputs)  # over the cap: as if never selected
  return {"tokens": inputs, "segments": segments, "valid": valid, "mlm_targets": targets,
          "mlm_weights": kept, "mlm_positions": positions, "nsp_labels": labels_B,
          "nsp_weights": np.ones(len(anchors_B), np.float32)}


def train_iterator(source: PairSource, cfg: MLMNSPConfig, tok: BertTokenizer, seq_len: int,
                   batch_size: int, seed: int):
  """Endless, checkpointable: batch i depends only on (seed, i)."""

  def batch(_, rng: np.random.Generator):
    anchors_B = source.anchors[rng.integers(0, len(source.anchors), size=batch_size)]
    return make_batch(source, anchors_B, rng, cfg, tok, seq_len)

  return iter(grain.MapDataset.range(_ENDLESS).random_map(batch, seed=seed).to_iter_dataset())


def eval_batches(source: PairSource, cfg: MLMNSPConfig, tok: BertTokenizer, seq_len: int,
                 batch_size: int) -> list[dict]:
  """Fixed pairs and masks; the last batch is padded with rows of weight 0."""
  rng = np.random.default_rng(cfg.eval_seed)
  anchors = source.anchors
  if cfg.eval_examples and len(anchors) > cfg.eval_examples:
    anchors = np.sort(rng.choice(anchors, cfg.eval_examples, replace=False))
  batches = []
  for start in range(0, len(anchors), batch_size):
    chunk = anchors[start:start + batch_size]
    real = len(chunk)
    chunk = np.concatenate([chunk, np.full(batch_size - real, chunk[0])])
    b = make_batch(source, chunk, rng, cfg, tok, seq_len)
    b["mlm_weights"][real:] = 0.0
    b["nsp_weights"][real:] = 0.0
    batches.append(b)
  return batches


# --- objective ------------------------------------------------------------------------------

def mlm_nsp_loss(model):
  """loss = MLM cross-entropy over the selected tokens + NSP cross-entropy over the pairs."""

  def loss_fn(params, batch, rng, deterministic=False):
    # With `mlm_positions` the head runs at the P prediction slots only; the slots index
    # the (B, T) targets and weights (padding slots point at [CLS], weight 0).
    positions_BP = batch.get("mlm_positions")
    mlm_logits_BPV, nsp_logits_B2 = model.apply(
        {"params": params}, batch["tokens"], batch["segments"], batch["valid"],
        mlm_positions_BP=positions_BP, deterministic=deterministic, rngs={"dropout": rng})
    targets_BP, w_BP = batch["mlm_targets"], batch["mlm_weights"]
    if positions_BP is not None:
      targets_BP = jnp.take_along_axis(targets_BP, positions_BP, axis=1)
      w_BP = jnp.take_along_axis(w_BP, positions_BP, axis=1)
    num_tokens = w_BP.sum()
    mlm_ce_BP = optax.softmax_cross_entropy_with_integer_labels(mlm_logits_BPV, targets_BP)
    mlm_hit_BP = jnp.argmax(mlm_logits_BPV, -1) == targets_BP
    mlm_loss = (mlm_ce_BP * w_BP).sum() / jnp.maximum(num_tokens, 1.0)
    mlm_accuracy = (mlm_hit_BP * w_BP).sum() / jnp.maximum(num_tokens, 1.0)
    w_B = batch["nsp_weights"]
    num_pairs = w_B.sum()
    nsp_ce_B = optax.softmax_cross_entropy_with_integer_labels(nsp_logits_B2, batch["nsp_labels"])
    nsp_hit_B = jnp.argmax(nsp_logits_B2, -1) == batch["nsp_labels"]
    nsp_loss = (nsp_ce_B * w_B).sum() / jnp.maximum(num_pairs, 1.0)
    nsp_accuracy = (nsp_hit_B * w_B).sum() / jnp.maximum(num_pairs, 1.0)
    loss = mlm_loss + nsp_loss
    return loss, {"loss": loss, "mlm_loss": mlm_loss, "mlm_accuracy": mlm_accuracy,
                  "nsp_loss": nsp_loss, "nsp_accuracy": nsp_accuracy,
                  "num_tokens": num_tokens, "num_pairs": num_pairs}

  return loss_fn


EVAL_WEIGHTS = {"nsp_loss": "num_pairs", "nsp_accuracy": "num_pairs"}  # the rest: num_tokens


# --- the task -------------------------------------------------------------------------------

def build(config, workdir: str):
  if config.family != "bert":
    raise UserError(f"task mlm_nsp needs the bert family, got {config.family!r}")
  cfg = config.task_config
  d = config.data
  text = read_text(d.path)
  train_text, val_text = split_text(text, d.val_fraction)
  tokenizer_path = os.path.join(workdir, workdir_lib.TOKENIZER)
  if os.path.exists(tokenizer_path):
    base = load_tokenizer(tokenizer_path)
  else:
    base = build_tokenizer(d.tokenizer, text if d.tokenizer == "char" else train_text,
                           d.vocab_size)
  tok = BertTokenizer(base)
  config = with_vocab(config, tok.vocab_size)
  if d.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={d.seq_len} exceeds model.max_len={config.model.max_len}")
  train_source, val_source = PairSource(train_text, tok), PairSource(val_text, tok)
  evals = eval_batches(val_source, cfg, tok, d.seq_len, d.eval_batch_size)

  def sample(model, params) -> str:
    """The first validation pair: masked input, the model's fill-in, and the original."""
    b = evals[0]
    logits_BTV, nsp_B2 = model.apply({"params": params}, b["tokens"][:1], b["segments"][:1],
                                     b["valid"][:1])
    n = int(b["valid"][0].sum())
    guess = np.where(b["mlm_weights"][0] > 0, np.argmax(np.asarray(logits_BTV[0]), -1),
                     b["tokens"][0])
    is_next = int(np.argmax(np.asarray(nsp_B2[0]))) == IS_NEXT
    return (f"input:     {tok.decode(b['tokens'][0, :n])}\n"
            f"predicted: {tok.decode(guess[:n])}\n"
            f"original:  {tok.decode(b['mlm_targets'][0, :n])}\n"
            f"next sentence: predicted {is_next}, "
            f"true {int(b['nsp_labels'][0]) == IS_NEXT}")

  task = Task(
      tokenizer=tok,
      train_iter=train_iterator(train_source, cfg, tok, d.seq_len, d.batch_size, d.seed),
      eval_batches=evals,
      tokens_per_step=d.batch_size * d.seq_len,
      make_loss=mlm_nsp_loss,
      init_params=lambda model, seed: bert_lib.init_params(model, d.seq_len, seed, boxed=True),
      sample=sample,
      save_files=lambda run_dir: tok.save(os.path.join(run_dir, workdir_lib.TOKENIZER)),
      eval_weights=EVAL_WEIGHTS)
  return config, task

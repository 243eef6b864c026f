"""Hugging Face BERT checkpoints -> the lm BERT family, without torch.

A checkpoint directory holds `config.json` (BertConfig fields), `model.safetensors`
(read with `safetensors.numpy`) and `tokenizer.json` (read with HF `tokenizers`);
`sentence_bert_config.json`, when present, gives the sentence-transformers maximum
length. Tensors map onto `lm.models.bert.Bert` (post-LN) as follows (torch Linear
weights are (out, in), ours (in, out); attention projections split heads):

  embeddings.word_embeddings / position_embeddings / token_type_embeddings
      -> token_embed / pos_embed / segment_embed .embedding
  embeddings.LayerNorm                      -> ln_embed
  encoder.layer.i.attention.self.{query,key,value} -> blocks_i.attn.{query,key,value}
  encoder.layer.i.attention.output.dense    -> blocks_i.attn.out
  encoder.layer.i.attention.output.LayerNorm -> blocks_i.ln_attn
  encoder.layer.i.intermediate.dense        -> blocks_i.mlp.wi
  encoder.layer.i.output.dense / LayerNorm  -> blocks_i.mlp.wo / blocks_i.ln_mlp
  pooler.dense                              -> pooler
  cls.predictions.transform.dense / LayerNorm, cls.predictions.bias -> mlm_head (optional)
  cls.seq_relationship                      -> nsp_head (optional)

A `bert.` prefix (BertForPreTraining checkpoints) is accepted. Anything unreadable or
unsupported is a one-line `UserError`.
"""

import dataclasses
import json
import os

import numpy as np

from lm.errors import UserError
from lm.models.bert import Bert, BertConfig

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
SENTENCE_CONFIG = "sentence_bert_config.json"
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


@dataclasses.dataclass
class HFBert:
  config: BertConfig
  model: Bert
  params: dict
  tokenizer: "HFTokenizer"
  max_seq_len: int  # texts are truncated to this many tokens, [CLS] and [SEP] included


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(data, dict):
    raise UserError(f"{path} must hold a JSON object")
  return data


def config_from_hf(hf: dict, where: str = CONFIG) -> BertConfig:
  """BertConfig from a Hugging Face config.json; other architectures are refused."""
  model_type = hf.get("model_type")
  if model_type != "bert":
    raise UserError(f"{where}: unsupported model_type {model_type!r}; only BERT checkpoints "
                    f"(model_type 'bert') can be imported")
  act = hf.get("hidden_act", "gelu")
  if act not in _ACTIVATIONS:
    raise UserError(f"{where}: unsupported hidden_act {act!r}; supported: {sorted(_ACTIVATIONS)}")
  position = hf.get("position_embedding_type", "absolute")
  if position != "absolute":
    raise UserError(f"{where}: unsupported position_embedding_type {position!r} "
                    f"(only 'absolute')")
  try:
    return BertConfig(
        vocab_size=int(hf["vocab_size"]), num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]), embed_dim=int(hf["hidden_size"]),
        mlp_dim=int(hf["intermediate_size"]), max_len=int(hf["max_position_embeddings"]),
        type_vocab_size=int(hf.get("type_vocab_size", 2)), dropout=0.0,
        norm_position="post", layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        mlp=_ACTIVATIONS[act])
  except KeyError as e:
    raise UserError(f"{where} lacks the field {e.args[0]!r}") from None
  except (TypeError, ValueError) as e:
    raise UserError(f"{where}: {e}") from None


def _linear(w, b):
  return {"kernel": np.ascontiguousarray(w.T), "bias": b}


def _norm(w, b):
  return {"scale": w, "bias": b}


def params_from_hf(tensors: dict, c: BertConfig, where: str = WEIGHTS) -> dict:
  """Our parameter tree from HF tensor names (see the module docstring)."""
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  D, N, H = c.embed_dim, c.num_heads, c.head_dim

  def get(name, shape):
    if name not in tensors:
      raise UserError(f"{where} lacks the tensor {name!r}")
    t = np.asarray(tensors[name], np.float32)
    if t.shape != tuple(shape):
      raise UserError(f"{where}: tensor {name!r} has shape {t.shape}, config.json implies "
                      f"{tuple(shape)}")
    return t

  def dense(prefix, n_in, n_out):
    return _linear(get(f"{prefix}.weight", (n_out, n_in)), get(f"{prefix}.bias", (n_out,)))

  def norm(prefix):
    return _norm(get(f"{prefix}.weight", (D,)), get(f"{prefix}.bias", (D,)))

  e = "embeddings"
  params = {
      "token_embed": {"embedding": get(f"{e}.word_embeddings.weight", (c.vocab_size, D))},
      "pos_embed": {"embedding": get(f"{e}.position_embeddings.weight", (c.max_len, D))},
      "segment_embed": {"embedding": get(f"{e}.token_type_embeddings.weight",
                                         (c.type_vocab_size, D))},
      "ln_embed": norm(f"{e}.LayerNorm"),
      "pooler": dense("pooler.dense", D, D),
  }
  for i in range(c.num_layers):
    p = f"encoder.layer.{i}"
    attn = {}
    for name in ("query", "key", "value"):
      lin = dense(f"{p}.attention.self.{name}", D, D)
      attn[name] = {"kernel": lin["kernel"].reshape(D, N, H), "bias": lin["bias"].reshape(N, H)}
    out = dense(f"{p}.attention.output.dense", D, D)
    attn["out"] = {"kernel": out["kernel"].reshape(N, H, D), "bias": out["bias"]}
    params[f"blocks_{i}"] = {
        "attn": attn, "ln_attn": norm(f"{p}.attention.output.LayerNorm"),
        "mlp": {"wi": dense(f"{p}.intermediate.dense", D, c.mlp_dim),
                "wo": dense(f"{p}.output.dense", c.mlp_dim, D)},
        "ln_mlp": norm(f"{p}.output.LayerNorm")}
  if "cls.predictions.bias" in tensors:
    params["mlm_head"] = {"transform": dense("cls.predictions.transform.dense", D, D),
                          "norm": norm("cls.predictions.transform.LayerNorm"),
                          "bias": get("cls.predictions.bias", (c.vocab_size,))}
  if "cls.seq_relationship.weight" in tensors:
    params["nsp_head"] = dense("cls.seq_relationship", D, 2)
  return params


class HFTokenizer:
  """tokenizer.json through HF `tokenizers`: [CLS] text [SEP], truncated, padded per batch."""

  def __init__(self, path: str, max_seq_len: int):
    import tokenizers as hf
    try:
      self.hf = hf.Tokenizer.from_file(path)
    except Exception as e:  # the Rust loader raises a bare Exception
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise UserError(f"{path} is not a valid tokenizers file: {msg}") from None
    pad_id = self.hf.token_to_id("[PAD]")
    self.hf.enable_truncation(max_seq_len)
    self.hf.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

  def __call__(self, texts: list[str]) -> dict:
    encs = self.hf.encode_batch(list(texts))
    return {"tokens": np.array([e.ids for e in encs], np.int32),
            "segments": np.array([e.type_ids for e in encs], np.int32),
            "valid": np.array([e.attention_mask for e in encs], bool)}


def load(path: str) -> HFBert:
  """Reads a checkpoint directory (config.json, model.safetensors, tokenizer.json)."""
  if not os.path.isdir(path):
    raise UserError(f"HF checkpoint directory not found: {path}")
  for name in (CONFIG, WEIGHTS, TOKENIZER):
    if not os.path.isfile(os.path.join(path, name)):
      raise UserError(f"HF checkpoint {path} lacks {name}")
  config = config_from_hf(_read_json(os.path.join(path, CONFIG)), os.path.join(path, CONFIG))
  weights = os.path.join(path, WEIGHTS)
  try:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
  except ImportError:
    raise UserError("reading HF checkpoints needs the safetensors package: "
                    "pip install safetensors") from None
  try:
    tensors = load_file(weights)
  except (SafetensorError, OSError, ValueError) as e:
    raise UserError(f"{weights} is not a readable safetensors file: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  params = params_from_hf(tensors, config, weights)
  max_seq_len = config.max_len
  sentence_config = os.path.join(path, SENTENCE_CONFIG)
  if os.path.isfile(sentence_config):
    max_seq_len = min(max_seq_len, int(_read_json(sentence_config).get("max_seq_length",
                                                                        max_seq_len)))
  tokenizer = HFTokenizer(os.path.join(path, TOKENIZER), max_seq_len)
  return HFBert(config, Bert(config), params, tokenizer, max_seq_len)


def embed(checkpoint: HFBert, texts: list[str], batch_size: int = 32) -> np.ndarray:
  """Sentence-transformers embeddings: mean over real tokens, L2-normalised, (N, D)."""
  import jax

  from lm.models.bert import mean_pool

  @jax.jit
  def encode(params, batch):
    hidden_BTD, _ = checkpoint.model.apply({"params": params}, batch["tokens"],
                                           batch["segments"], batch["valid"],
                                           method=Bert.encode)
    return mean_pool(hidden_BTD, batch["valid"])

  out = [np.asarray(encode(checkpoint.params, checkpoint.tokenizer(texts[i:i + batch_size])))
         for i in range(0, len(texts), batch_size)]
  return np.concatenate(out) if out else np.zeros((0, checkpoint.config.embed_dim), np.float32)

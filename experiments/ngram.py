"""Fit an n-gram LM (`config.kind = "ngram"`), score the validation text, export ARPA, sample.

  python -m experiments.run --config=configs/ngram.py --workdir=W \
      [--config.data.val_path=FILE2 --config.data.per_line=True --config.model.order=3]

Writes config.json, tokenizer.json, metrics.jsonl (one row), summary.json (val_loss in
nats/token, val_ppl including OOV tokens, val_ppl_excl_oov, oov_tokens, build_time_s,
...), ngram_model.npz (the fitted model that --mode=sample/score reload,
lm/models/ngram_io.py) and, for Kneser-Ney, model.arpa. Scoring follows KenLM's
`query`: in sentence mode every word and each </s> is scored; OOV tokens are `<unk>`,
and "excluding OOV" drops their own log-probabilities (the words after them keep
theirs). In stream mode every validation token after the first is scored, as in the neural runner's eval.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.corpus import read_text, split_text
from lm.data.tokenizers import UNK, build_tokenizer
from lm.models.ngram import NGramConfig, NGramLM, TokenStream
from lm.models.ngram_arpa import write_arpa
from lm.models.ngram_io import FILE as NGRAM_MODEL
from lm.models.ngram_io import decode_ids, save_ngram, sentence_lines
from lm.models.ngram_sampling import generate
from lm.train.metrics import write_json

ARPA = "model.arpa"
BOS, EOS = "<s>", "</s>"


@dataclasses.dataclass
class Corpus:
  """A tokenizer, the train and validation streams, and the n-gram vocabulary around them."""
  tokenizer: object
  train: TokenStream
  val: TokenStream
  vocab_size: int  # tokenizer ids, then <s> and </s> in sentence mode
  bos: int | None
  eos: int | None
  tokenize_time_s: float

  def token_strings(self) -> list[str]:
    tok = self.tokenizer
    if tok.kind == "bpe":  # byte-level symbols ("Ġthe"): unique, unlike decoded byte pieces
      strings = [tok.hf.id_to_token(i) for i in range(tok.vocab_size)]
    else:
      strings = [tok.decode([i]) for i in range(tok.vocab_size)]
    return strings + ([BOS, EOS] if self.bos is not None else [])

  def decode(self, ids) -> str:
    return decode_ids(self.tokenizer, ids, self.bos, self.eos)


def load_corpus(data: config_lib.DataConfig) -> Corpus:
  """Reads and tokenizes the corpus once (char alphabet from all text, as the trainer does)."""
  start = time.perf_counter()
  text = read_text(data.path)
  if data.val_path:
    train_text, val_text = text, read_text(data.val_path)
  else:
    train_text, val_text = split_text(text, data.val_fraction)
  source = train_text + val_text if data.tokenizer == "char" else train_text
  tokenizer = build_tokenizer(data.tokenizer, source, data.vocab_size)
  V = tokenizer.vocab_size
  if data.per_line:
    bos, eos = V, V + 1
    encode = lambda t: TokenStream.from_sequences(map(tokenizer.encode, sentence_lines(t)),
                                                  bos, eos)
    train, val = encode(train_text), encode(val_text)
    vocab_size = V + 2
  else:
    bos = eos = None
    train = TokenStream.from_sequences([tokenizer.encode(train_text)])
    val = TokenStream.from_sequences([tokenizer.encode(val_text)])
    vocab_size = V
  return Corpus(tokenizer, train, val, vocab_size, bos, eos, time.perf_counter() - start)


def scored_mask(corpus: Corpus, stream: TokenStream) -> np.ndarray:
  """Positions that are predictions: not <s>; in stream mode, not the very first token."""
  if corpus.bos is not None:
    return stream.tokens_P != corpus.bos
  mask = np.ones(len(stream.tokens_P), bool)
  mask[:1] = False
  return mask


def oov_mask(corpus: Corpus, stream: TokenStream) -> np.ndarray:
  """Tokens the vocabulary maps to <unk> (only the word tokenizer has one)."""
  if corpus.tokenizer.kind != "word":
    return np.zeros(len(stream.tokens_P), bool)
  return stream.tokens_P == corpus.tokenizer.words.index(UNK)


def evaluate(model: NGramLM, corpus: Corpus, stream: TokenStream) -> dict:
  logp_P = model.logprobs(stream)
  scored = scored_mask(corpus, stream)
  oov = oov_mask(corpus, stream) & scored
  loss = float(-logp_P[scored].mean())
  kept = scored & ~oov
  loss_excl = float(-logp_P[kept].mean()) if kept.any() else float("nan")
  return {"loss": loss, "ppl": math.exp(loss), "ppl_excl_oov": math.exp(loss_excl),
          "tokens": int(scored.sum()), "oov_tokens": int(oov.sum())}


def fit_and_score(model_config: NGramConfig, corpus: Corpus) -> tuple[NGramLM, dict]:
  """Fits on the train stream; metrics on both splits plus timings and model size."""
  start = time.perf_counter()
  model = NGramLM.fit(model_config, corpus.train, corpus.vocab_size, corpus.bos, corpus.eos)
  build_time = time.perf_counter() - start
  start = time.perf_counter()
  val = evaluate(model, corpus, corpus.val)
  score_time = time.perf_counter() - start
  train = evaluate(model, corpus, corpus.train)
  train_tokens = int(scored_mask(corpus, corpus.train).sum())
  ngrams = model.num_ngrams()
  metrics = {
      "val_loss": val["loss"], "val_ppl": val["ppl"], "val_ppl_excl_oov": val["ppl_excl_oov"],
      "oov_tokens": val["oov_tokens"], "val_tokens": val["tokens"],
      "train_loss": train["loss"], "train_ppl": train["ppl"], "train_tokens": train_tokens,
      "build_time_s": build_time, "score_time_s": score_time,
      "tokenize_time_s": corpus.tokenize_time_s,
      "tokens_per_sec": train_tokens / build_time,
      "unseen_val_ngrams": model.unseen_fractions(corpus.val),
      "ngrams": ngrams, "params": int(sum(ngrams)), "size_mb": model.nbytes() / 2**20,
      "order": model_config.order, "smoothing": model_config.smoothing,
      "discounts": {str(n): list(d) for n, d in model.discounts().items()},
      "discount_fallback_orders": model.discount_fallback,
  }
  return model, metrics


def run(config: config_lib.ExperimentConfig, workdir: str) -> dict:
  start = time.time()
  os.makedirs(workdir, exist_ok=True)
  corpus = load_corpus(config.data)
  config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, vocab_size=corpus.tokenizer.vocab_size))
  model, metrics = fit_and_score(config.model, corpus)
  config_lib.save_json(config, os.path.join(workdir, workdir_lib.CONFIG))
  corpus.tokenizer.save(os.path.join(workdir, workdir_lib.TOKENIZER))
  save_ngram(model, os.path.join(workdir, NGRAM_MODEL))
  if config.model.smoothing == "kneser_ney":
    write_arpa(model, os.path.join(workdir, ARPA), corpus.token_strings())

  s = config.sample
  prompt_ids = corpus.tokenizer.encode(s.prompt)
  sample_ids = generate(model, prompt_ids, max_new_tokens=s.max_new_tokens,
                        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)
  sep = " " if config.data.tokenizer == "word" and len(prompt_ids) else ""
  summary = {**metrics, "steps": 1, "vocab_size": corpus.vocab_size,
             "tokenizer": corpus.tokenizer.kind, "per_line": config.data.per_line,
             "sample": s.prompt + sep + corpus.decode(sample_ids[0]),
             "wall_time_s": time.time() - start}
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    row = {k: metrics[k] for k in ("train_loss", "val_loss", "val_ppl", "build_time_s")}
    f.write(json.dumps({"step": 1, **row}) + "\n")
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(f"{config.model.order}-gram {config.model.smoothing}: val_loss {metrics['val_loss']:.4f} "
        f"nats/token, val_ppl {metrics['val_ppl']:.3f} (excl. OOV "
        f"{metrics['val_ppl_excl_oov']:.3f}, {metrics['oov_tokens']} OOV of "
        f"{metrics['val_tokens']}), {metrics['params']:,} n-grams, build "
        f"{metrics['build_time_s']:.2f}s, score {metrics['score_time_s']:.2f}s")
  print(f"--- sample ---\n{summary['sample']}")
  print(f"summary written to {workdir}/summary.json")
  return summary

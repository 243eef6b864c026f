"""Any trained workdir back as something to sample from and score (`--mode=sample/score`).

One table, `LOADERS`, maps what a workdir holds (`config.task`, or `config.kind` for runs
outside the supervised trainer: n-gram, GRPO) to a loader returning a `Trained`:
`generate(prompt, knobs) -> texts` and `score(text, prompt) -> Scored`. Neural params
come from the checkpoint's own metadata (`Checkpointer.restore_params`): no task is
rebuilt, no optimizer state is read, and only the generating model is kept (MTP modules
are training-only; DPO's reference and a student's teacher live in other workdirs).

- decoders (causal_lm, tbptt_lm, moe_lm, mtp_lm, distill): continue the prompt; score by
  the chain rule, the first token by the training split's unigram prior.
- addition decoders (sft, dpo, grpo): "12+34=" becomes the chat template's prompt; the
  completion stops at the end-of-turn token; greedy by default.
- encoder-decoders (seq2seq, span_corruption, denoising): the prompt is the source;
  greedy at temperature 0, `beam_size > 1` beam search, else sampling; score is
  log p(target | source) by the chain rule, EOS included.
- BERT (mlm_nsp): score is the pseudo-log-likelihood; it does not generate.
- n-gram: the model saved as ngram_model.npz; the same sampling knobs.
"""

import dataclasses
import json
import os
import re
from collections.abc import Callable

import numpy as np

from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.data.tokenizers import load_tokenizer
from lm.errors import UserError
from lm.models.registry import build_model


@dataclasses.dataclass(frozen=True)
class Knobs:
  temperature: float
  top_k: int
  top_p: float
  max_new_tokens: int
  seed: int
  num_samples: int = 1
  beam_size: int = 0


@dataclasses.dataclass
class Scored:
  ids: list[int]  # the scored tokens
  tokens: list[str]  # each as text
  logprobs: np.ndarray  # natural log, one per token
  notes: dict[int, str] = dataclasses.field(default_factory=dict)  # row -> remark
  given: str = ""  # what the tokens are conditioned on besides earlier ones ("source")
  pseudo: bool = False  # a pseudo-log-likelihood (each token masked), not the chain rule


@dataclasses.dataclass
class Trained:
  what: str  # "sft run (gpt, step 200)", for messages
  sample_defaults: config_lib.SampleConfig  # knobs left unset take these
  generate: Callable[[str, Knobs], list[str]] | None
  score: Callable[[str, str | None], Scored]
  no_generate: str = ""  # why `generate` is None
  beam_search: bool = False  # takes Knobs.beam_size > 1


def load(workdir: str) -> Trained:
  """The loader for whatever `workdir` holds; a one-line UserError for what it cannot."""
  path = os.path.join(workdir, workdir_lib.CONFIG)
  if not os.path.exists(path):
    raise UserError(f"{workdir} is not a trained workdir: {workdir_lib.CONFIG} is missing")
  with open(path) as f:
    raw = json.load(f)
  kind = raw.get("kind", "train_lm")
  name = kind if kind in LOADERS or "task" not in raw else raw["task"]
  if name not in LOADERS:
    raise UserError(f"{workdir} holds a {name!r} run; --mode=sample/score support "
                    f"{', '.join(sorted(LOADERS))}")
  return LOADERS[name](workdir)


# ---------------------------------------------------------------------------- shared pieces

def _token_texts(tokenizer, ids) -> list[str]:
  return [tokenizer.decode([int(i)]) for i in ids]


def _encode_nonempty(tokenizer, text: str, what: str) -> np.ndarray:
  ids = np.asarray(tokenizer.encode(text), np.int32)
  if ids.size == 0:
    raise UserError(f"{what} is empty: nothing to score")
  return ids


# ---------------------------------------------------------------------------- decoders

def _decoder_score(d: workdir_lib.TrainedModel):
  from lm.scoring import token_logprobs

  def score(text: str, prompt: str | None) -> Scored:
    ids = _encode_nonempty(d.tokenizer, text, "--text")
    context = d.tokenizer.encode(prompt) if prompt else np.zeros(0, np.int32)
    full = np.concatenate([context, ids]).astype(np.int32)
    logps = token_logprobs(d.model, d.params, full, d.token_prior)[len(context):]
    notes = {} if len(context) else {0: f"first token: {d.prior_name}"}
    return Scored(ids.tolist(), _token_texts(d.tokenizer, ids), logps, notes,
                  given="prompt" if len(context) else "")

  return score


def _decoder_generate(d: workdir_lib.TrainedModel, stop_at: str | None = None):
  from lm.sampling import generate as generate_ids

  def generate(prompt: str, k: Knobs) -> list[str]:
    ids = d.tokenizer.encode(prompt)
    out = generate_ids(d.model, d.params, ids, max_new_tokens=k.max_new_tokens,
                       temperature=k.temperature, top_k=k.top_k, top_p=k.top_p, seed=k.seed,
                       num_samples=k.num_samples)
    texts = [d.tokenizer.decode(row) for row in out]
    if stop_at is not None:
      texts = [text.partition(stop_at)[0] for text in texts]
    return [prompt + text for text in texts]

  return generate


def _decoder(workdir: str) -> Trained:
  d = workdir_lib.load_trained(workdir, tasks=None)
  return Trained(f"{d.config.task} run ({d.config.family}, step {d.step})", d.config.sample,
                 _decoder_generate(d), _decoder_score(d))


_SUM = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=?\s*$")


def _addition_prompt(prompt: str | None) -> str | None:
  """"12+34=" -> the chat template's "Q: What is 12 plus 34? A: "; other text unchanged."""
  from lm.data import addition
  m = _SUM.match(prompt or "")
  return addition.prompt_text(int(m[1]), int(m[2])) if m else prompt


def _addition(workdir: str) -> Trained:
  """SFT, DPO and GRPO runs on addition: a decoder behind the chat template."""
  from lm.data import addition
  from lm.post_training.policy import model_config_path
  from lm.tasks.sft import response_budget
  d = workdir_lib.load_trained(workdir, model_config_path(workdir), tasks=None)  # GRPO: policy.json
  digits = getattr(d.config.task_config, "num_digits", 9)  # DPO's config does not say
  defaults = dataclasses.replace(d.config.sample, temperature=0.0,
                                 max_new_tokens=response_budget(digits))
  generate = _decoder_generate(d, stop_at=addition.EOS)
  score = _decoder_score(d)
  return Trained(f"{d.config.task} run ({d.config.family}, step {d.step})", defaults,
                 lambda prompt, k: generate(_addition_prompt(prompt), k),
                 lambda text, prompt: score(text, _addition_prompt(prompt)))


# ---------------------------------------------------------------------------- encoder-decoder

_SPECIAL = re.compile(r"(<extra_id_\d+>|<mask>)")


def _encdec_ids(tokenizer, text: str) -> np.ndarray:
  """A source or target: text with T5 sentinels / BART's <mask> written by name, then EOS."""
  from lm.data.seq2seq_pairs import EOS_ID
  ids = []
  for piece in _SPECIAL.split(text):
    if _SPECIAL.fullmatch(piece):
      if piece not in tokenizer.specials:
        raise UserError(f"{piece} is not a special token of this tokenizer "
                        f"({', '.join(tokenizer.specials)})")
      ids.append(tokenizer.specials.index(piece))
    elif piece:
      ids.extend(int(i) for i in tokenizer.encode(piece))
  return np.asarray(ids + [EOS_ID], np.int32)


def _encdec(workdir: str) -> Trained:
  from lm.data.seq2seq_pairs import EOS_ID, load_special_tokenizer
  from lm.decoding import beam_search, greedy_decode, strip_after_eos
  from lm.encdec_sampling import sample_targets, target_logprobs
  config = config_lib.load_json(os.path.join(workdir, workdir_lib.CONFIG))
  model = build_model(config.family, config.model)
  params, step = workdir_lib.restore_params(workdir)
  tokenizer = load_special_tokenizer(os.path.join(workdir, workdir_lib.TOKENIZER))
  max_target = config.model.max_target_len
  length_penalty = getattr(config.task_config, "length_penalty", 0.0)  # seq2seq has one

  def source(prompt: str) -> np.ndarray:
    ids = _encdec_ids(tokenizer, prompt or "")
    if len(ids) > config.model.max_len:
      raise UserError(f"the source has {len(ids)} tokens with EOS; this model reads at most "
                      f"model.max_len={config.model.max_len}")
    return ids

  def generate(prompt: str, k: Knobs) -> list[str]:
    src_1S, max_len = source(prompt)[None], min(k.max_new_tokens, max_target)
    if max_len == 0:
      return [""] * k.num_samples
    if k.beam_size > 1:
      seqs, _ = beam_search(model, params, src_1S, beam_size=k.beam_size, max_len=max_len,
                            eos_id=EOS_ID, length_penalty=length_penalty)
      rows = seqs[0, :min(k.num_samples, k.beam_size)]
    elif k.temperature == 0:
      rows = np.repeat(greedy_decode(model, params, src_1S, max_len=max_len, eos_id=EOS_ID),
                       k.num_samples, axis=0)
    else:
      rows = sample_targets(model, params, src_1S[0], max_len=max_len, eos_id=EOS_ID,
                            temperature=k.temperature, top_k=k.top_k, top_p=k.top_p,
                            seed=k.seed, num_samples=k.num_samples)
    return [tokenizer.decode(strip_after_eos(row, EOS_ID)) for row in rows]

  def score(text: str, prompt: str | None) -> Scored:
    if prompt is None:
      raise UserError("scoring an encoder-decoder needs the source: --prompt=SOURCE "
                      "(--text is the target)")
    target = _encdec_ids(tokenizer, text)
    if len(target) > max_target:
      raise UserError(f"the target has {len(target)} tokens with EOS; this model writes at "
                      f"most model.max_target_len={max_target}")
    logps = target_logprobs(model, params, source(prompt), target)
    return Scored(target.tolist(), _token_texts(tokenizer, target), logps, given="source")

  defaults = dataclasses.replace(config.sample, temperature=0.0,
                                 max_new_tokens=min(config.sample.max_new_tokens, max_target))
  return Trained(f"{config.task} run (encdec, step {step})", defaults, generate, score,
                 beam_search=True)


# ---------------------------------------------------------------------------- BERT

def _bert(workdir: str) -> Trained:
  from lm.eval.bias import pseudo_log_likelihood
  from lm.tasks.mlm_nsp import BertTokenizer
  config = config_lib.load_json(os.path.join(workdir, workdir_lib.CONFIG))
  model = build_model(config.family, config.model)
  params, step = workdir_lib.restore_params(workdir)
  tokenizer = BertTokenizer(load_tokenizer(os.path.join(workdir, workdir_lib.TOKENIZER)))

  def score(text: str, prompt: str | None) -> Scored:
    if prompt is not None:
      raise UserError("BERT scores --text alone (a pseudo-log-likelihood): drop --prompt")
    ids = _encode_nonempty(tokenizer, text, "--text")
    logps = pseudo_log_likelihood(model, params, ids, cls_id=tokenizer.cls_id,
                                  sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id)
    return Scored(ids.tolist(), _token_texts(tokenizer, ids), logps, pseudo=True)

  return Trained(f"mlm_nsp run (bert, step {step})", config.sample, None, score,
                 no_generate=f"{workdir} holds a BERT (mlm_nsp) encoder: encoder-only models "
                             f"do not generate; --mode=score gives its pseudo-log-likelihood")


# ---------------------------------------------------------------------------- n-gram

def _ngram(workdir: str) -> Trained:
  from lm.models import ngram_io
  from lm.models.ngram import TokenStream
  from lm.models.ngram_sampling import generate as generate_ids
  config = config_lib.load_json(os.path.join(workdir, workdir_lib.CONFIG))
  path = os.path.join(workdir, ngram_io.FILE)
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no {ngram_io.FILE} (n-gram runs write it since sampling "
                    f"and scoring were added): rerun its n-gram config into this workdir")
  model = ngram_io.load_ngram(path)
  tokenizer = load_tokenizer(os.path.join(workdir, workdir_lib.TOKENIZER))
  sentences = model.bos is not None

  def generate(prompt: str, k: Knobs) -> list[str]:
    ids = tokenizer.encode(prompt)
    out = generate_ids(model, ids, max_new_tokens=k.max_new_tokens, temperature=k.temperature,
                       top_k=k.top_k, top_p=k.top_p, seed=k.seed, num_samples=k.num_samples)
    sep = " " if tokenizer.kind == "word" and len(ids) else ""
    return [prompt + sep + ngram_io.decode_ids(tokenizer, row, model.bos, model.eos)
            for row in out]

  def score(text: str, prompt: str | None) -> Scored:
    if sentences and prompt is not None:
      raise UserError("a sentence-mode n-gram scores whole lines: put the prompt in --text")
    context = tokenizer.encode(prompt) if prompt else np.zeros(0, np.int64)
    if sentences:  # every line is <s> w_1 .. w_k </s>; <s> is context, never scored
      lines = [tokenizer.encode(line) for line in ngram_io.sentence_lines(text)]
      stream = TokenStream.from_sequences(lines, model.bos, model.eos)
      keep = stream.tokens_P != model.bos
    else:
      _encode_nonempty(tokenizer, text, "--text")
      stream = TokenStream.from_sequences([np.concatenate([context, tokenizer.encode(text)])])
      keep = np.arange(len(stream.tokens_P)) >= len(context)
    ids = stream.tokens_P[keep]
    if ids.size == 0:
      raise UserError("--text is empty: nothing to score")
    logps = model.logprobs(stream)[keep]
    names = ["</s>" if i == model.eos else tokenizer.decode([int(i)]) for i in ids]
    notes = {} if sentences or len(context) else {0: "first token: the model's unigram probability"}
    return Scored(ids.tolist(), names, logps, notes, given="prompt" if len(context) else "")

  return Trained(f"{config.model.order}-gram {config.model.smoothing} run", config.sample,
                 generate, score)


LOADERS = {
    "causal_lm": _decoder, "tbptt_lm": _decoder, "moe_lm": _decoder, "mtp_lm": _decoder,
    "distill": _decoder,
    "sft": _addition, "dpo": _addition, "grpo": _addition,
    "seq2seq": _encdec, "span_corruption": _encdec, "denoising": _encdec,
    "mlm_nsp": _bert,
    "ngram": _ngram,
}

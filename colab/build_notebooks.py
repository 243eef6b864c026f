"""Writes the colab/ notebooks (nbformat v4, no outputs) from the cells below.

  python colab/build_notebooks.py        # rewrites colab/0[1-7]_*.ipynb

Each notebook starts with the same cell: install lm from the repository when it is not
installed, pick a size from the hardware (`jax.devices()`), or tiny settings when
LM_NOTEBOOK_SMOKE=1 (tests/test_notebooks.py runs every notebook that way).
"""

import os
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''\
# Install lm from the repository when it is not installed yet.
import importlib.util, subprocess, sys, os
if importlib.util.find_spec('lm') is None:
    if not os.path.exists('lm-repo'):
        raise SystemExit('clone the lm repository into ./lm-repo first')
    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', '-e', 'lm-repo'])
    os.chdir('lm-repo')
{pre_jax}import jax
# LM_NOTEBOOK_SMOKE=1 (CI) picks tiny settings; otherwise the size follows the hardware.
PLATFORM = jax.devices()[0].platform
SIZE = ('smoke' if os.environ.get('LM_NOTEBOOK_SMOKE') == '1'
        else 'cpu' if PLATFORM == 'cpu' else 'accelerator')
print(len(jax.devices()), 'x', jax.devices()[0].device_kind, '->', SIZE)'''

# A few lines of training with the library's own pieces: the scanned, jitted train step
# (lm.train.step), the optimizer and the causal-LM loss; batches are random windows.
TRAIN_GPT = '''\
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from lm.config import OptimConfig
from lm.models.gpt import GPT, GPTConfig
from lm.objectives import causal_lm_loss
from lm.tasks.causal_lm import init_params
from lm.train.optimizer import make_optimizer
from lm.train.state import create_train_state
from lm.train.step import make_multi_step

def train_gpt(config, ids, steps, batch_size=16, chunk=10, lr=3e-3, seed=0):
    """Trains a GPT on random windows of `ids` with lm's train step; returns model, params, losses."""
    model, T = GPT(config), config.max_len
    params = jax.jit(lambda: nn.meta.unbox(init_params(model, T, seed)))()
    tx = make_optimizer(OptimConfig(lr=lr, min_lr=lr / 10, warmup_steps=max(1, steps // 20)), steps)
    state, multi_step = create_train_state(params, tx), make_multi_step(causal_lm_loss(model), tx)
    rng, losses = np.random.default_rng(seed), []
    for _ in range(steps // chunk):
        starts = rng.integers(0, len(ids) - T - 1, size=(chunk, batch_size))
        windows = np.asarray(ids)[starts[..., None] + np.arange(T + 1)]
        state, metrics = multi_step(state, {'inputs': windows[..., :-1], 'targets': windows[..., 1:]},
                                    jax.random.key(seed))
        losses += np.asarray(metrics['loss']).tolist()
    return model, state.params, losses'''


def md(text: str):
  return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
  return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


def setup(pre_jax: str = ""):
  return nbformat.v4.new_code_cell(SETUP.format(pre_jax=pre_jax))


def notebook(cells) -> nbformat.NotebookNode:
  for i, cell in enumerate(cells):
    cell.id = f"cell-{i:02d}"  # stable ids: rebuilding leaves unchanged notebooks unchanged
  nb = nbformat.v4.new_notebook(cells=cells)
  nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3"},
                 "language_info": {"name": "python"}, "accelerator": "GPU"}
  return nb


# --- the notebooks -------------------------------------------------------------------------

NOTEBOOKS = {}


def register(name):
  def wrap(fn):
    NOTEBOOKS[name] = fn
    return fn
  return wrap


@register("01_language_models.ipynb")
def nb01():
  return [
      md("""
      # 01 · Language models: tokens, the chain rule, n-grams vs Transformers, temperature

      A language model is a probability distribution over token sequences,
      p(x_1..x_L) = Π_i p(x_i | x_<i) (the chain rule). This notebook builds the pieces on
      tiny Shakespeare with `lm`: tokenizers, a Kneser-Ney n-gram and a small GPT, scores a
      sentence against its shuffles, and turns the temperature knob from 0 to ∞.
      """),
      setup(),
      code("""
      import math, itertools
      import matplotlib.pyplot as plt
      from configs.base import TINY_SHAKESPEARE
      from lm.data.corpus import read_text, split_text
      from lm.data.tokenizers import build_tokenizer
      text = read_text(TINY_SHAKESPEARE)
      if SIZE == 'smoke':
          text = text[:200_000]
      train_text, val_text = split_text(text, 0.1)
      print(f'{len(text):,} characters; first line: {text.splitlines()[0]!r}')
      """),
      md("""
      ## Tokens and the vocabulary
      The model never sees text, only ids from a fixed vocabulary. Characters give a tiny
      vocabulary and long sequences; words a huge vocabulary with unknown words (`<unk>`);
      byte-level BPE sits in between.
      """),
      code("""
      sentence = 'the mouse ate the cheese'
      tokenizers = {'char': build_tokenizer('char', text),
                    'word': build_tokenizer('word', train_text),
                    'bpe': build_tokenizer('bpe', train_text, 300 if SIZE == 'smoke' else 1000)}
      lengths = {}
      for kind, tok in tokenizers.items():
          ids = tok.encode(sentence)
          pieces = [tok.decode([i]) for i in ids]
          lengths[kind] = len(tok.encode(val_text)) / len(val_text)
          print(f'{kind:>4}: vocab {tok.vocab_size:>6,}  {len(ids):>2} tokens  {pieces}')
      plt.figure(figsize=(5, 2.5))
      plt.bar(list(lengths), list(lengths.values()))
      plt.ylabel('tokens per character'); plt.title('sequence length of the val text')
      plt.show()
      """),
      md("""
      ## The chain rule with an n-gram model
      A character 6-gram with interpolated Kneser-Ney smoothing (`lm.models.ngram`, NumPy)
      assigns log p(x_i | x_{i-5..i-1}) to each character; the sentence's log-probability is
      their sum. Shuffling the words keeps the characters but breaks the grammar.
      """),
      code("""
      from lm.models.ngram import NGramConfig, NGramLM, TokenStream
      char = tokenizers['char']
      train_ids = char.encode(train_text)
      ngram = NGramLM.fit(NGramConfig(order=6), TokenStream.from_sequences([train_ids]),
                          char.vocab_size)

      def ngram_logprob(s):
          return float(ngram.logprobs(TokenStream.from_sequences([char.encode(s)])).sum())

      words = sentence.split()
      shuffles = sorted({' '.join(p) for p in itertools.permutations(words)} - {sentence})
      per_char = ngram.logprobs(TokenStream.from_sequences([char.encode(sentence)]))
      plt.figure(figsize=(8, 2.5))
      plt.bar(range(len(sentence)), per_char); plt.xticks(range(len(sentence)), list(sentence))
      plt.ylabel('log p(x_i | x_<i)'); plt.title(f'6-gram: log p(sentence) = {per_char.sum():.2f}')
      plt.show()
      """),
      md("""
      ## A small Transformer on the same characters
      `train_gpt` runs the library's jitted, scanned train step (`lm.train.step`) with its
      AdamW schedule and causal-LM loss. The size follows the hardware (a few seconds in CI).
      """),
      code(TRAIN_GPT),
      code("""
      sizes = {'smoke': (dict(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=128, max_len=32), 20),
               'cpu': (dict(num_layers=2, num_heads=4, embed_dim=64, mlp_dim=256, max_len=64), 600),
               'accelerator': (dict(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512,
                                    max_len=128), 3000)}
      shape, steps = sizes[SIZE]
      model, params, losses = train_gpt(GPTConfig(vocab_size=char.vocab_size, **shape), train_ids, steps)
      plt.figure(figsize=(5, 2.5)); plt.plot(losses)
      plt.xlabel('step'); plt.ylabel('train loss (nats/char)'); plt.show()
      """),
      code("""
      from lm.scoring import next_token_logprobs, token_logprobs
      from lm.workdir import unigram_logprobs
      prior = unigram_logprobs(train_ids, char.vocab_size)  # scores the first character

      def gpt_logprob(s):
          return float(token_logprobs(model, params, char.encode(s), prior).sum())

      scores = {s: (ngram_logprob(s), gpt_logprob(s)) for s in [sentence] + shuffles}
      xs, ys = zip(*scores.values())
      plt.figure(figsize=(5, 4))
      plt.scatter(xs[1:], ys[1:], s=12, label=f'{len(shuffles)} word shuffles')
      plt.scatter([xs[0]], [ys[0]], c='r', s=40, label=repr(sentence))
      plt.xlabel('6-gram log p'); plt.ylabel('GPT log p'); plt.legend(); plt.show()
      rank = sorted(scores, key=lambda s: -scores[s][0]).index(sentence)
      print(f'6-gram ranks the original {rank + 1} of {len(scores)}')
      for s in sorted(scores, key=lambda s: -scores[s][0])[:3]:
          print(f'{scores[s][0]:8.2f} {scores[s][1]:8.2f}  {s}')
      """),
      md("## Samples: n-gram vs Transformer (temperature 0.8)"),
      code("""
      from lm.models import ngram_sampling
      from lm.sampling import generate
      prompt, n_new = 'ROMEO:', 60 if SIZE == 'smoke' else 200  # smoke: the compile below is reused
      p_ids = char.encode(prompt)
      print('--- 6-gram ---')
      print(prompt + char.decode(ngram_sampling.generate(ngram, p_ids, max_new_tokens=n_new,
                                                         temperature=0.8)[0]))
      print('--- GPT ---')
      print(prompt + char.decode(generate(model, params, p_ids, max_new_tokens=n_new,
                                          temperature=0.8)[0]))
      """),
      md("""
      ## Temperature from 0 to ∞
      Sampling divides the logits by T: T → 0 is argmax (entropy 0), T = 1 is the model,
      T → ∞ the uniform distribution (entropy log V).
      """),
      code("""
      logp_V = next_token_logprobs(model, params, char.encode('ROMEO:\\nI'))[-1]
      temps = np.logspace(-2, 2, 60)
      probs = [np.exp(logp_V / t - np.logaddexp.reduce(logp_V / t)) for t in temps]
      entropy = [-(p * np.log(np.maximum(p, 1e-30))).sum() for p in probs]
      fig, ax = plt.subplots(1, 2, figsize=(11, 3))
      ax[0].semilogx(temps, entropy); ax[0].axhline(math.log(char.vocab_size), ls='--', c='gray')
      ax[0].set_xlabel('temperature'); ax[0].set_ylabel('entropy (nats)')
      ax[0].set_title("next character after 'ROMEO:\\\\nI'")
      top = np.argsort(-logp_V)[:8]
      for t in (0.3, 1.0, 3.0):
          p = np.exp(logp_V / t - np.logaddexp.reduce(logp_V / t))
          ax[1].plot([repr(char.decode([i])) for i in top], p[top], 'o-', label=f'T={t}')
      ax[1].set_ylabel('probability'); ax[1].legend(); plt.show()
      for t in (0.0, 0.5, 1.0, 2.0, float('inf')):
          out = generate(model, params, p_ids, max_new_tokens=60, temperature=t, seed=0)[0]
          print(f'T={t:<4}', repr(prompt + char.decode(out)))
      """),
  ]



@register("02_transformer_anatomy.ipynb")
def nb02():
  return [
      md("""
      # 02 · Transformer anatomy: masks, positions, attention maps, the KV cache

      Every piece here is the code the models run (`lm/layers/`): the mask builders, the
      positional encodings, the attention of a small trained GPT, and generation with and
      without a key/value cache.
      """),
      setup(),
      code("""
      import time
      import matplotlib.pyplot as plt
      import jax.numpy as jnp
      import numpy as np
      from lm.layers import masks, positions
      T = 16
      pos = jnp.arange(T)[None]
      valid = jnp.arange(T)[None] < 12  # the last 4 positions are padding
      causal = masks.causal_mask(pos, pos)
      shown = {'causal (GPT)': causal,
               'bidirectional + padding (BERT)': masks.padding_mask(valid, valid),
               'prefix LM, prefix 6 (T5)': masks.prefix_lm_mask(pos, pos, jnp.array([6])),
               'local, window 4': causal & masks.local_mask(pos, pos, 4),
               'strided, stride 4': causal & masks.strided_mask(pos, pos, 4)}
      fig, axes = plt.subplots(1, len(shown), figsize=(16, 3.4))
      for ax, (name, m) in zip(axes, shown.items()):
          ax.imshow(np.asarray(m[0, 0]), cmap='Blues'); ax.set_title(name, fontsize=9)
          ax.set_xlabel('key'); ax.set_ylabel('query')
      plt.show()
      print('keys each query sees:', {k: int(v.sum()) for k, v in shown.items()})
      """),
      md("""
      ## Positional encodings
      Sinusoidal positions are added to the embeddings; RoPE rotates queries and keys so
      their dot product depends only on the distance; ALiBi and T5 add a bias to the
      attention logits (a linear penalty per head, or a learned value per distance bucket).
      """),
      code("""
      L = 128
      p = jnp.arange(L)[None]
      fig, ax = plt.subplots(1, 4, figsize=(17, 3.2))
      ax[0].imshow(np.asarray(positions.sinusoidal_embedding(p, 64)[0]).T, aspect='auto', cmap='RdBu')
      ax[0].set_title('sinusoidal: channel x position')
      # RoPE: the same vector as query at position m and key at position n, for every n.
      x = jax.random.normal(jax.random.key(0), (1, 1, 1, 64))
      q = positions.apply_rope(jnp.broadcast_to(x, (1, L, 1, 64)), p)
      ax[1].plot(np.asarray(jnp.einsum('h,th->t', q[0, 64, 0], q[0, :, 0])))
      ax[1].axvline(64, c='gray', ls='--'); ax[1].set_title('RoPE: q(64) . k(n)'); ax[1].set_xlabel('n')
      bias = positions.alibi_bias(p[:, :32], p[:, :32], num_heads=8)
      below = np.asarray(masks.causal_mask(p[:, :32], p[:, :32])[0, 0])
      ax[2].imshow(np.where(below, np.asarray(bias[0, 0]), np.nan), cmap='viridis')
      ax[2].set_title(f'ALiBi head 0 (slope {float(positions.alibi_slopes(8)[0]):.2f})')
      rel = jnp.arange(-L + 1, L)
      ax[3].plot(rel, positions.relative_position_bucket(rel, bidirectional=True), label='bidirectional')
      ax[3].plot(rel, positions.relative_position_bucket(rel, bidirectional=False), label='causal')
      ax[3].set_title('T5 buckets'); ax[3].set_xlabel('key - query'); ax[3].legend()
      plt.show()
      """),
      md("""
      ## Attention maps of a small trained GPT
      `attention_maps` swaps `lm.layers.attention.dot_product_attention` for a wrapper that
      records softmax(q·k/√H) under the mask, then calls the real function, so the model
      runs unchanged.
      """),
      code(TRAIN_GPT),
      code("""
      from configs.base import TINY_SHAKESPEARE
      from lm.data.corpus import read_text
      from lm.data.tokenizers import build_tokenizer
      import lm.layers.attention as attention_lib
      text = read_text(TINY_SHAKESPEARE)
      char = build_tokenizer('char', text)
      ids = char.encode(text[:100_000] if SIZE == 'smoke' else text)
      shape, steps = {'smoke': (dict(num_layers=1, embed_dim=32, mlp_dim=128), 20),
                      'cpu': (dict(num_layers=2, embed_dim=64, mlp_dim=256), 600),
                      'accelerator': (dict(num_layers=4, embed_dim=128, mlp_dim=512), 3000)}[SIZE]
      config = GPTConfig(vocab_size=char.vocab_size, num_heads=4, max_len=64, **shape)
      model, params, losses = train_gpt(config, ids, steps)
      print(f'train loss {losses[0]:.2f} -> {losses[-1]:.2f} after {steps} steps')

      def attention_maps(model, params, tokens):
          recorded, original = [], attention_lib.dot_product_attention
          def recording(q, k, v, mask, bias=None, **kw):
              logits = jnp.einsum('btnh,bsnh->bnts', q, k) * q.shape[-1] ** -0.5
              recorded.append(jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1))
              return original(q, k, v, mask, bias, **kw)
          attention_lib.dot_product_attention = recording
          try:
              model.apply({'params': params}, jnp.asarray(tokens)[None])
          finally:
              attention_lib.dot_product_attention = original
          return np.stack([np.asarray(r[0]) for r in recorded])  # (layers, heads, T, S)

      line = 'ROMEO:\\nWhat light through yonder window breaks?'
      maps = attention_maps(model, params, char.encode(line))
      fig, axes = plt.subplots(maps.shape[0], maps.shape[1], figsize=(3 * maps.shape[1], 3 * maps.shape[0]),
                               squeeze=False)
      for l in range(maps.shape[0]):
          for h in range(maps.shape[1]):
              axes[l, h].imshow(maps[l, h], cmap='magma'); axes[l, h].set_title(f'layer {l} head {h}', fontsize=9)
              axes[l, h].set_xticks([]); axes[l, h].set_yticks([])
      plt.show()
      """),
      md("""
      ## The KV cache
      Without a cache each new token re-runs the model over the whole context; with it
      (`lm.sampling.generate`) only the new token is computed and its keys and values are
      appended. Both loops below decode greedily and must agree token for token.
      """),
      code("""
      from lm.sampling import generate
      from lm.scoring import next_token_logprobs
      prompt = char.encode('ROMEO:')
      n_new = config.max_len - len(prompt)
      full_forward = jax.jit(lambda params, x: model.apply({'params': params}, x)[0])

      def greedy_without_cache():
          buf = np.zeros((1, config.max_len), np.int32); buf[0, :len(prompt)] = prompt
          for i in range(len(prompt), config.max_len):
              logits = full_forward(params, jnp.asarray(buf))  # the whole window, every step
              buf[0, i] = int(jnp.argmax(logits[0, i - 1]))
          return buf[0, len(prompt):]

      def timed(fn):
          fn()  # compile
          start = time.perf_counter(); out = fn(); return out, time.perf_counter() - start

      with_cache, t_cache = timed(lambda: generate(model, params, prompt, max_new_tokens=n_new,
                                                   temperature=0.0)[0])
      without, t_plain = timed(greedy_without_cache)
      print('same tokens:', np.array_equal(with_cache, without), repr(char.decode(with_cache)))
      plt.figure(figsize=(4, 2.5))
      plt.bar(['KV cache', 'no cache'], [n_new / t_cache, n_new / t_plain])
      plt.ylabel('tokens / s'); plt.title(f'{t_plain / t_cache:.0f}x faster with the cache'); plt.show()
      """),
  ]


@register("03_three_families.ipynb")
def nb03():
  return [
      md("""
      # 03 · Three families on one text: BERT (encoder), GPT (decoder), T5 (encoder-decoder)

      The lecture's three architectures, each trained with its own objective by `lm`'s tasks
      (`mlm_nsp`, `causal_lm`, `span_corruption`) and the shared train step, then asked to do
      what it was trained for on the same line of Shakespeare: fill in masked characters,
      continue a prompt, and rewrite dropped spans after sentinels.
      """),
      setup(),
      code("""
      import importlib, tempfile
      import flax.linen as nn
      import jax.numpy as jnp
      import numpy as np
      from IPython.display import Markdown, display
      from lm.config import from_dict
      from lm.data.pipeline import next_chunk
      from lm.models.registry import build_model
      from lm.tasks import build_task
      from lm.train.optimizer import make_optimizer
      from lm.train.state import create_train_state
      from lm.train.step import make_multi_step

      # CI (smoke) only builds and initialises: compiling three train steps costs too much there.
      STEPS = {'smoke': 0, 'cpu': 300, 'accelerator': 3000}[SIZE]

      def trained(config_name, steps=STEPS, chunk=50):
          c = importlib.import_module(f'configs.{config_name}').get_config('smoke' if SIZE == 'smoke' else None)
          config, task = build_task(from_dict(c.to_dict()), tempfile.mkdtemp())
          model = build_model(config.family, config.model)
          params = jax.jit(lambda: nn.meta.unbox(task.init_params(model, 0)))()
          if steps:
              tx = make_optimizer(config.optim, steps)
              state, multi_step = create_train_state(params, tx), make_multi_step(task.make_loss(model), tx)
              batches = iter(task.train_iter)
              for _ in range(steps // chunk):
                  state, metrics = multi_step(state, next_chunk(batches, chunk), jax.random.key(0))
              print(f'{config_name}: loss {float(metrics["loss"][-1]):.3f} after {steps} steps')
              params = state.params
          return config, task, model, params

      def num_params(params):
          return sum(x.size for x in jax.tree.leaves(params))

      line_a, line_b = 'But soft, what light through yonder window breaks?', 'It is the east, and Juliet is the sun.'
      """),
      md("## Encoder-only: BERT fills in masked characters (bidirectional context)"),
      code("""
      from lm.tasks.mlm_nsp import pack_pairs
      bert_config, bert_task, bert, bert_params = trained('bert_shakespeare')
      tok = bert_task.tokenizer
      seq_len = bert_config.data.seq_len
      tokens, segments, valid, maskable = pack_pairs([tok.encode(line_a)], [tok.encode(line_b)], seq_len, tok)
      chosen = np.zeros_like(maskable); chosen[0, np.flatnonzero(maskable[0])[::6]] = True
      masked = np.where(chosen, tok.mask_id, tokens)
      mlm_logits, nsp_logits = bert.apply({'params': bert_params}, masked, segments, valid)
      filled = np.where(chosen, np.argmax(np.asarray(mlm_logits), -1), tokens)
      print('input:    ', tok.decode(masked[0][valid[0]]))
      print('filled in:', tok.decode(filled[0][valid[0]]))
      print(f'masked characters right: {int((filled == tokens)[chosen].sum())} / {int(chosen.sum())}; '
            f'P(B follows A) = {float(jax.nn.softmax(nsp_logits)[0, 0]):.2f}')
      """),
      md("## Decoder-only: GPT continues the line (left-to-right context)"),
      code("""
      from lm.sampling import generate
      gpt_config, gpt_task, gpt, gpt_params = trained('shakespeare_char')
      prompt = gpt_task.tokenizer.encode(line_a + '\\n')
      out = generate(gpt, gpt_params, prompt, max_new_tokens=60, temperature=0.0)[0]
      print(line_a + '\\n' + gpt_task.tokenizer.decode(out))
      """),
      md("## Encoder-decoder: T5 writes the dropped spans after their sentinels"),
      code("""
      from lm.data.seq2seq_pairs import EOS_ID
      from lm.decoding import greedy_decode
      from lm.tasks.span_corruption import make_examples, noise_counts
      t5_config, t5_task, t5, t5_params = trained('t5_shakespeare')
      t5_tok, L, tc = t5_task.tokenizer, t5_config.data.seq_len, t5_config.task_config
      n_noise, n_spans = noise_counts(L, tc.noise_density, tc.mean_noise_span_length)
      ids = t5_tok.encode((line_a + ' ' + line_b) * 4)
      (x,), (y,) = make_examples(ids, [0], L, np.random.default_rng(0), tc,
                                 [t5_tok.sentinel_id(k) for k in range(n_spans)])
      pred = greedy_decode(t5, t5_params, np.asarray(x)[None], max_len=len(y), eos_id=EOS_ID)[0]
      print('input (spans dropped):', repr(t5_tok.decode([t for t in x if t])))
      print('target:               ', repr(t5_tok.decode([t for t in y if t])))
      print('T5 greedy:            ', repr(t5_tok.decode([t for t in pred if t])))
      """),
      md("## The comparison table"),
      code("""
      rows = [('encoder-only (BERT)', 'bidirectional + padding', 'MLM (15%, 80/10/10) + NSP',
               '15% of tokens', num_params(bert_params), 'embeddings, classification'),
              ('decoder-only (GPT)', 'causal', 'next-token prediction', 'every token',
               num_params(gpt_params), 'generation, scoring'),
              ('encoder-decoder (T5)', 'bidirectional encoder, causal decoder + cross',
               f'span corruption ({tc.noise_density:.0%}, mean span {tc.mean_noise_span_length:g})',
               f'{n_noise} of {L} tokens + {n_spans} sentinels', num_params(t5_params), 'text to text')]
      table = ['| family | attention | objective | predicted per example | params | use |',
               '| --- | --- | --- | --- | --- | --- |']
      table += [f'| {a} | {b} | {c} | {d} | {e:,} | {f} |' for a, b, c, d, e, f in rows]
      display(Markdown('\\n'.join(table)))
      """),
  ]


@register("04_adaptation.ipynb")
def nb04():
  pre_jax = ("# CI (smoke): compile quickly rather than run quickly (set before jax is imported).\n"
             "if os.environ.get('LM_NOTEBOOK_SMOKE') == '1' and 'jax' not in sys.modules:\n"
             "    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +\n"
             "                               ' --xla_backend_optimization_level=0').strip()\n")
  return [
      md("""
      # 04 · Adapting a pretrained model: full, LoRA, prefix, prompt, adapters, BitFit, probes; few-shot prompting

      A char GPT pretrained on tiny Shakespeare is adapted to one task, "which of 8 speakers
      says this line?" (`configs/adapt_speakers.py`, chance 1/8), by every method of
      `lm/adapt/methods.py`. A method is only config: PEFT layers (`lm/layers/peft.py`) and
      regexes over parameter paths that say what trains (`lm/adapt/trainable.py`); the
      trainer is the usual one. Then linear probes on the frozen features, the LoRA merge,
      and adaptation without any update: k-shot prompts (`lm/icl`). See docs/adaptation.md
      and docs/icl.md.
      """),
      setup(pre_jax),
      md("""
      ## The pretrained backbone
      `configs/shakespeare_char.py` trained by `lm.train.trainer.train` into a temporary
      workdir: the default model on an accelerator, 300 steps of it on a CPU, one small block
      for 20 steps in CI.
      """),
      code("""
      import contextlib, io, re, tempfile
      import flax.linen as nn
      import jax.numpy as jnp
      import matplotlib.pyplot as plt
      import numpy as np
      from IPython.display import Markdown, display
      from configs import adapt_speakers, icl_strings, shakespeare_char
      from lm.config import from_dict
      from lm.train.trainer import train

      def run(config, workdir):
          \"\"\"lm's trainer on an ExperimentConfig; its log is kept quiet, the summary returned.\"\"\"
          with contextlib.redirect_stdout(io.StringIO()):
              return train(config, workdir)

      root = tempfile.mkdtemp()
      BASE = os.path.join(root, 'gpt')
      c = shakespeare_char.get_config('smoke' if SIZE == 'smoke' else None)
      if SIZE == 'smoke':
          c.model.num_layers, c.model.embed_dim, c.model.mlp_dim = 1, 32, 128
          c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 20
          c.sample.max_new_tokens = 0  # no sample: its compile would cost more than the training
      elif SIZE == 'cpu':
          c.train.num_steps = c.train.eval_every = 300
      base = run(from_dict(c.to_dict()), BASE)
      print(f"{base['params']:,} parameters, {base['steps']} steps: val loss {base['val_loss']:.2f} nats/char")
      if c.sample.max_new_tokens:
          print(base['sample'][:150])
      """),
      md("""
      ## Which parameters each method trains
      `configs/adapt_speakers.py:method=M,init_from=DIR` adds the method's layers to the
      pretrained model, puts a classifier head (`head/`) on its last position, and lists the
      trainable regexes. Below, every parameter path of the classifier (blocks folded into
      `block_*`): ✓ trains, · frozen, empty: the method does not have it.
      """),
      code("""
      from lm.adapt import trainable as trainable_lib
      from lm.adapt.methods import METHODS
      from lm.models.registry import build_model
      from lm.tasks.classify import Classifier, pooling_for
      STEPS = {'smoke': 10, 'cpu': 150, 'accelerator': 600}[SIZE]

      def adapt_config(method):
          c = adapt_speakers.get_config(f'method={method},init_from={BASE},steps={STEPS}' +
                                        (',smoke' if SIZE == 'smoke' else ''))
          if SIZE == 'smoke':
              c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = STEPS
          return from_dict(c.to_dict())

      def abstract_params(config):
          \"\"\"The classifier's parameter shapes (backbone + head), nothing computed.\"\"\"
          model = Classifier(build_model(config.family, config.model), config.family,
                             pooling_for(config.family, config.task_config.pooling),
                             config.task_config.num_speakers)
          x = jnp.zeros((1, config.data.seq_len), jnp.int32)
          return jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), x, x == 0))['params'])

      configs = {m: adapt_config(m) for m in METHODS}
      counts, marks = {}, {}
      for m, config in configs.items():
          shapes = abstract_params(config)
          counts[m] = trainable_lib.count(shapes, config.trainable)
          for path in trainable_lib.param_paths(shapes):
              row = marks.setdefault(re.sub(r'block_\\d+', 'block_*', path), {})
              row[m] = '✓' if trainable_lib.is_trainable(path, config.trainable) else '·'
      table = ['| parameter | ' + ' | '.join(METHODS) + ' |', '| --- |' + ' :-: |' * len(METHODS)]
      table += [f'| `{p}` | ' + ' | '.join(row.get(m, '') for m in METHODS) + ' |' for p, row in sorted(marks.items())]
      table.append('| **trainable** | ' + ' | '.join(f"{counts[m]['trainable_params']:,} ({100 * counts[m]['trainable_fraction']:.3g}%)"
                                                   for m in METHODS) + ' |')
      table.append('| regexes | ' + ' | '.join(', '.join(f'`{p}`' for p in configs[m].trainable) or 'all' for m in METHODS) + ' |')
      display(Markdown('\\n'.join(table)))
      """),
      md("""
      ## Fine-tuning: one run per method
      Each run starts from the backbone's checkpoint (`init_from`), trains only what its
      regexes select (frozen parameters keep no optimizer state), and reports
      `trainable_fraction` and `val_accuracy` in its summary.
      """),
      code("""
      results = {}
      for m, config in configs.items():
          results[m] = s = run(config, os.path.join(root, m))
          assert s['trainable_params'] == counts[m]['trainable_params']  # what the table counted
          print(f"{m:>8}: {s['trainable_params']:>7,} of {s['total_params']:,} parameters "
                f"({100 * s['trainable_fraction']:6.3f}%), val accuracy {s['val_accuracy']:.3f}")
      """),
      md("""
      ## Linear probes on the frozen backbone
      `probe_workdir` pools the backbone's features of every line (last position, mean) and
      fits a softmax regression on them (`lm/eval/probing.py`): how much speaker identity is
      linearly readable from what the model learned without labels.
      """),
      code("""
      from lm.eval.probing import probe_workdir
      probes = probe_workdir(BASE)
      POOLINGS = [k for k in probes if isinstance(probes[k], dict)]
      for pooling in POOLINGS:
          p = probes[pooling]
          p['trainable_fraction'] = (p['feature_dim'] + 1) * probes['num_classes'] / base['params']
          print(f"probe ({pooling:>4}): {p['feature_dim']} features, val accuracy {p['accuracy']:.3f} "
                f"(train {p['train_accuracy']:.3f})")
      """),
      md("""
      ## Trainable fraction vs accuracy
      In CI (10 steps on a 20-step backbone) every point sits near chance: that run only
      checks the machinery. The full table is `configs/adaptation_table.py`
      (docs/adaptation.md).
      """),
      code("""
      fig, ax = plt.subplots(figsize=(7, 4))
      for m, s in results.items():
          ax.scatter(s['trainable_fraction'], s['val_accuracy'], s=45)
          ax.annotate(m, (s['trainable_fraction'], s['val_accuracy']), textcoords='offset points', xytext=(5, 4))
      for pooling in POOLINGS:
          p = probes[pooling]
          ax.scatter(p['trainable_fraction'], p['accuracy'], marker='s', c='k', s=35)
          ax.annotate(f'probe ({pooling})', (p['trainable_fraction'], p['accuracy']),
                      textcoords='offset points', xytext=(5, -10))
      ax.axhline(1 / probes['num_classes'], ls='--', c='gray', label='chance')
      ax.set_xscale('log'); ax.set_xlabel('trainable fraction of the parameters')
      ax.set_ylabel('val accuracy (8 speakers)'); ax.legend(); plt.show()
      """),
      md("""
      ## LoRA merges into the base weights
      `merge_lora` folds (α/r)·A·B into each adapted kernel and drops LoRA from the config:
      the base model's shape and cost, the same function.
      """),
      code("""
      import functools
      from lm import workdir as workdir_lib
      from lm.adapt.merge import merge_lora
      from lm.adapt.pretrained import load_params
      from lm.data.tokenizers import load_tokenizer
      from lm.models.gpt import GPT
      lora_values, lora_params, _ = load_params(os.path.join(root, 'lora'))
      base_values, base_params, _ = load_params(BASE)
      lora_config, base_config = from_dict(lora_values).model, from_dict(base_values).model
      backbone = lora_params['backbone']  # the classifier's GPT, with its trained LoRA pairs
      merged, merged_config = merge_lora(backbone, lora_config)
      tok = load_tokenizer(os.path.join(BASE, workdir_lib.TOKENIZER))
      x = jnp.asarray([tok.encode('ROMEO:\\nWhat light through yonder window')[:base_config.max_len]])

      @functools.partial(jax.jit, static_argnums=0)
      def logits(config, params):
          return GPT(config).apply({'params': params}, x)[0]

      def size(params):
          return sum(a.size for a in jax.tree.leaves(params))

      unmerged = np.asarray(logits(lora_config, backbone))
      print(f'parameters: {size(backbone):,} with LoRA, {size(merged):,} merged, {size(base_params):,} base')
      print(f'max |merged - unmerged| logits = {np.abs(np.asarray(logits(merged_config, merged)) - unmerged).max():.2e}')
      print(f'max |LoRA - base| logits       = {np.abs(np.asarray(logits(base_config, base_params)) - unmerged).max():.2e}'
            '  (what the fine-tuning changed)')
      """),
      md("""
      ## Few-shot prompting: accuracy vs k
      No weights change: the prompt shows k examples `input -> output` and the model must
      continue the query (`lm/icl/prompts.py`). `lm.icl.harness.evaluate` scores it by greedy
      exact match (`generate`) or by the most likely of the candidate answers (`choice`).
      Off CI the notebook pretrains a GPT on rows of one unnamed string task each
      (`configs/icl_strings.py`); in CI it asks the tiny Shakespeare model (separator `: `,
      option scoring only), which never saw such strings, so its curve says nothing about
      ICL. Measured numbers: docs/icl.md and docs/reproductions.md (`python -m experiments.icl`).
      """),
      code("""
      from lm.icl import harness, suites
      from lm.icl.loading import load_decoder
      from lm.tasks.icl_strings import eval_suite
      if SIZE == 'smoke':
          decoder = load_decoder(BASE)  # Shakespeare never showed it these tasks: held out
          tasks = suites.string_suite('', 'copy,reverse,uppercase', separator=': ')
          shots, methods, num_eval = (0, 1, 2), ('choice',), 16
      else:
          c = icl_strings.get_config(f"steps={300 if SIZE == 'cpu' else 500}")
          icl_run = run(from_dict(c.to_dict()), os.path.join(root, 'icl'))
          print(f"icl_strings: {icl_run['steps']} steps, answers' loss {icl_run['val_first_loss']:.2f} "
                f"with no example before them, {icl_run['val_later_loss']:.2f} after >= 4")
          decoder = load_decoder(os.path.join(root, 'icl'))
          tasks = eval_suite(decoder.config.task_config)
          shots, methods, num_eval = (0, 1, 2, 4, 8), ('generate', 'choice'), 32
      icl = {m: harness.evaluate(decoder.model, decoder.params, decoder.tokenizer, tasks, shots=shots,
                                 num_eval=num_eval, method=m, description=SIZE != 'smoke') for m in methods}
      first = icl[methods[0]]['tasks'][tasks[0].name]['samples']
      print('a 1-shot prompt:', repr(first['k=1']['prompt']), '->', repr(first['k=1']['output']))
      fig, ax = plt.subplots(figsize=(6, 3.5))
      for m, res in icl.items():
          for group, means in res['means'].items():
              ks = [k for k in shots if means[f'k={k}'] is not None]
              ax.plot(ks, [means[f'k={k}'] for k in ks], 'o-' if m == 'generate' else 's--',
                      label=f'{m}, {harness.GROUP_NAMES[group]}')
      ax.set_xlabel('k (examples in the prompt)'); ax.set_ylabel('accuracy'); ax.set_xticks(shots)
      ax.legend(fontsize=8); plt.show()
      display(Markdown(harness.format_table(icl[methods[0]])))
      """),
  ]


@register("05_scaling_laws.ipynb")
def nb05():
  return [
      md("""
      # 05 · Scaling laws: sweep, fit, plot, compare with Kaplan and Chinchilla

      Loss falls as a power of parameters N, data D and compute C ≈ 6ND. `lm.scaling`
      declares sweeps in a config, runs each size × budget as an ordinary training run, and
      fits Kaplan's and Chinchilla's laws (Huber on log-loss, L-BFGS from a grid). On an
      accelerator this notebook runs the committed grid and IsoFLOP sweeps (minutes); on a
      CPU it runs the smoke sweep to show the machinery and fits the committed results
      (`docs/scaling/`, measured on one H200); in CI it only fits the committed results.
      """),
      setup(),
      code("""
      import json, tempfile
      import matplotlib.pyplot as plt
      import numpy as np
      from configs import scaling_isoflop, scaling_sweep
      from experiments import sweep as sweep_exp
      from experiments.scaling_report import PUBLISHED
      from lm.scaling import fit, frontier, laws

      def run_sweep(config_module, arg=None):
          workdir = tempfile.mkdtemp()
          return sweep_exp.run(sweep_exp.parse_config(config_module.get_config(arg).to_dict()), workdir)

      def committed(name):
          with open(f'docs/scaling/{name}_results.jsonl') as f:
              return [json.loads(line) for line in f]

      if SIZE == 'accelerator':
          grid, isoflop = run_sweep(scaling_sweep), run_sweep(scaling_isoflop)
      else:
          if SIZE == 'cpu':
              print(json.dumps(run_sweep(scaling_sweep, 'smoke')[0], indent=1))
          grid, isoflop = committed('scaling_sweep'), committed('scaling_isoflop')
      print(f'{len(grid)} grid runs, {len(isoflop)} IsoFLOP runs')
      """),
      md("## Fits: Kaplan's L(N, D) on the grid, Chinchilla's E + A/N^α + B/D^β on all runs"),
      code("""
      def arrays(rows, *keys):
          return [np.array([r[k] for r in rows], float) for k in keys]

      n, d, y = arrays(grid, 'non_embedding_params', 'tokens', 'val_loss')
      kaplan = fit.fit(laws.KAPLAN, np.log([n, d]), y).constants
      n_all, d_all, y_all = arrays(grid + isoflop, 'non_embedding_params', 'tokens', 'val_loss')
      chin = fit.fit(laws.CHINCHILLA, np.log([n_all, d_all]), y_all).constants
      budgets, n_iso, y_iso = arrays(isoflop, 'budget', 'non_embedding_params', 'val_loss')
      iso = frontier.isoflop_frontier(budgets, n_iso, y_iso)
      rows = [('Kaplan alpha_N', kaplan['alpha_N'], PUBLISHED['kaplan']['alpha_N']),
              ('Kaplan alpha_D', kaplan['alpha_D'], PUBLISHED['kaplan']['alpha_D']),
              ('Chinchilla alpha', chin['alpha'], PUBLISHED['chinchilla']['alpha']),
              ('Chinchilla beta', chin['beta'], PUBLISHED['chinchilla']['beta']),
              ('N_opt ~ C^a (IsoFLOP)', iso['a'], PUBLISHED['chinchilla']['a'])]
      print(f"{'':24}{'ours':>8}{'paper':>8}")
      for name, ours, paper in rows:
          print(f'{name:24}{ours:8.3f}{paper:8.3f}')
      """),
      code("""
      fig, ax = plt.subplots(1, 3, figsize=(16, 4))
      for budget in sorted(set(d)):
          sel = d == budget
          order = np.argsort(n[sel])
          line, = ax[0].semilogx(n[sel][order], y[sel][order], 'o', label=f'D={budget:.2g}')
          ns = np.logspace(np.log10(n.min()), np.log10(n.max()), 50)
          ax[0].semilogx(ns, laws.chinchilla_loss(ns, budget, **chin), '-', c=line.get_color())
      ax[0].set_xlabel('non-embedding params N'); ax[0].set_ylabel('val loss'); ax[0].legend(fontsize=7)
      ax[0].set_title('grid runs and the Chinchilla fit')
      for budget in sorted(set(budgets)):
          sel = budgets == budget
          order = np.argsort(n_iso[sel])
          ax[1].semilogx(n_iso[sel][order], y_iso[sel][order], 'o-', label=f'C={budget:.1g}')
      ax[1].semilogx(iso['n_opt'], [m['loss_opt'] for m in iso['minima']], 'k*', ms=12, label='optimum')
      ax[1].set_xlabel('N'); ax[1].set_title('IsoFLOP profiles'); ax[1].legend(fontsize=7)
      cs = np.logspace(11, 14, 20)
      ax[2].loglog(cs, iso['k_n'] * cs ** iso['a'], label=f"ours (IsoFLOP): N ~ C^{iso['a']:.2f}")
      ax[2].loglog(cs, frontier.parametric_frontier(chin, cs)[0], '--', label='ours (parametric)')
      hoffmann = dict(PUBLISHED['chinchilla'])
      ax[2].loglog(cs, frontier.parametric_frontier(hoffmann, cs)[0], ':', label='Hoffmann 2022 constants')
      ax[2].set_xlabel('compute C = 6ND'); ax[2].set_ylabel('N_opt'); ax[2].legend(fontsize=7)
      ax[2].set_title('compute-optimal model size')
      plt.show()
      print('tokens per parameter at our IsoFLOP optima:',
            [round(dd / nn) for dd, nn in zip(iso['d_opt'], iso['n_opt'])], '(Chinchilla: ~20)')
      """),
  ]


@register("06_deepseek_ideas.ipynb")
def nb06():
  return [
      md("""
      # 06 · DeepSeek ideas: MoE balancing, multi-token prediction, MLA, GRPO

      Four mechanisms of DeepSeek-V2/V3 and DeepSeekMath as they are implemented in `lm`
      (`lm/layers/moe.py`, `lm/objectives_mtp.py`, `lm/layers/mla.py`,
      `lm/post_training/`). Training-scale numbers come from the committed results of
      `python -m experiments.deepseek_table` and the GRPO run (`docs/deepseek.md`,
      `docs/post_training.md`); on an accelerator the notebook reruns GRPO itself.
      """),
      setup(),
      md("""
      ## Auxiliary-loss-free load balancing
      A router with a bias towards a few experts (inputs that share a direction) sends most
      tokens to them. DeepSeek-V3 adds a per-expert bias b to the *selection* only and nudges
      it after every step: b_e += γ·sign(mean load − load_e) (`lm.tasks.mtp_lm.update_balance_bias`).
      Here the router is frozen, so only the bias moves.
      """),
      code("""
      import json
      import flax.linen as nn
      import jax.numpy as jnp
      import matplotlib.pyplot as plt
      import numpy as np
      from lm.layers.moe import STATS, MoE, MoEConfig
      from lm.tasks.mtp_lm import update_balance_bias
      key = jax.random.key(0)
      x = jax.random.normal(key, (8, 64, 32)) + 2.0 * jax.random.normal(jax.random.key(1), (32,))
      moe = MoE(MoEConfig(num_experts=8, top_k=2, expert_dim=64, router='sigmoid'))
      params = {'moe': nn.meta.unbox(jax.jit(moe.init)(key, x)['params'])}

      @jax.jit
      def loads(params):
          _, stats = moe.apply({'params': params['moe']}, x, mutable=[STATS])
          return stats[STATS]['load'][0] * 8  # share of assignments x experts: 1 = balanced

      history = []
      for step in range(100 if SIZE == 'smoke' else 400):
          load = loads(params)
          history.append(np.asarray(load))
          params = update_balance_bias(params, {'moe': load}, rate=0.01)
      history = np.array(history)
      fig, ax = plt.subplots(1, 2, figsize=(11, 3))
      ax[0].plot(history.max(1) - 1); ax[0].set_xlabel('bias updates'); ax[0].set_ylabel('max violation')
      ax[1].bar(np.arange(8) - 0.2, history[0], 0.4, label='before'); ax[1].bar(np.arange(8) + 0.2, history[-1], 0.4, label='after')
      ax[1].axhline(1, c='gray', ls='--'); ax[1].set_xlabel('expert'); ax[1].set_ylabel('load'); ax[1].legend()
      plt.show()
      with open('docs/deepseek/results_seed0.json') as f:
          table = json.load(f)
      for row in ('moe_none', 'moe_aux', 'moe_aux_free'):
          r = table[row]
          print(f"{row:>13}: val loss {r['val_loss']:.3f}, final max violation {r['max_violation']:.2f}  (400 training steps)")
      """),
      md("""
      ## Multi-token prediction
      Depth k at position i reads the embedding of token i+k and predicts token i+k+1
      (`lm.objectives_mtp.mtp_inputs_and_targets`), so the extra heads see the causal chain.
      """),
      code("""
      from lm.objectives_mtp import mtp_inputs_and_targets
      text = 'the mouse ate'
      ids = jnp.array([[ord(c) for c in text]])
      inputs, targets = ids[:, :-1], ids[:, 1:]
      for k in (0, 1, 2):
          tok, tgt, w = mtp_inputs_and_targets(inputs, targets, None, k) if k else (inputs, targets, None)
          # depth k at position i: the trunk saw text[:i+1], the chain embedded k more tokens
          shown = [f'{text[:i + 1]!r}+{text[i + 1:i + k + 1]!r} -> {chr(tgt[0, i])!r}' for i in range(3)]
          print(f'depth {k}: ' + ';  '.join(shown))
      print(f"main-head val loss: {table['dense']['val_loss']:.3f} without MTP, "
            f"{table['dense_mtp']['val_loss']:.3f} with D=1 (400 steps, one seed)")
      """),
      md("""
      ## Multi-head latent attention: the cache
      MLA caches a d_c-dim latent and one shared RoPE key per token and layer instead of
      2·K·H numbers of keys and values. The byte counts below come from
      `kv_cache_bytes_per_token` and, independently, from the caches the GPT allocates.
      """),
      code("""
      from lm.layers.mla import kv_cache_bytes_per_token
      from lm.models.gpt import GPT, GPTConfig
      variants = {'MHA (4 heads)': dict(), 'GQA (2 KV heads)': dict(num_kv_heads=2),
                  'MQA (1 KV head)': dict(num_kv_heads=1),
                  'MLA (d_c 32 + RoPE 16)': dict(attention='mla', position='none')}
      sizes = {}
      for name, extra in variants.items():
          config = GPTConfig(vocab_size=65, max_len=64, **extra)
          caches = jax.eval_shape(lambda: GPT(config).init_cache(1, 1))
          allocated = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(caches))
          sizes[name] = kv_cache_bytes_per_token(config)
          assert allocated == sizes[name], (name, allocated)
      plt.figure(figsize=(6, 2.5)); plt.barh(list(sizes), list(sizes.values()))
      plt.xlabel('KV cache bytes per token (f32, 4 layers)'); plt.show()
      print(f"MLA val loss {table['mla']['val_loss']:.3f} vs MHA {table['dense']['val_loss']:.3f} (400 steps)")
      """),
      md("""
      ## GRPO on addition
      Rewards are rules, not labels: 1 for the right sum, 0.1 for the `<answer>…</answer>`
      format. Each prompt gets a group of samples; a sample's advantage is its reward minus
      the group mean, over the group std (`lm.post_training.losses.group_advantages`).
      """),
      code("""
      from lm.data.addition import answer_correct, format_ok, prompt_text
      from lm.post_training.losses import group_advantages
      a, b = 47, 38
      group = ['<answer>85</answer>', '<answer>75</answer>', '85', '<answer>85</answer>']
      rewards = np.array([[1.0 * answer_correct(c, a, b) + 0.1 * format_ok(c, True) for c in group]])
      print(prompt_text(a, b), '| rewards', rewards[0], '| advantages', np.round(np.asarray(group_advantages(rewards))[0], 2))
      if SIZE == 'accelerator':  # SFT warm start, then GRPO, with the documented commands
          run = lambda *args: subprocess.run([sys.executable, '-m', 'experiments.run', *args], check=True)
          run('--config=configs/sft_addition.py:digits=2,steps=500', '--workdir=/tmp/nb_sft')
          run('--config=configs/grpo_addition.py', '--config.init_from=/tmp/nb_sft', '--workdir=/tmp/nb_grpo')
          metrics_path = '/tmp/nb_grpo/metrics.jsonl'
      else:
          metrics_path = 'experiments/reproduce/results/grpo_metrics.jsonl'  # a 2-core CPU run
      rows = [json.loads(line) for line in open(metrics_path)]
      steps = [r['step'] for r in rows if 'reward' in r]
      reward = np.convolve([r['reward'] for r in rows if 'reward' in r], np.ones(10) / 10, mode='valid')
      evals = [r for r in rows if 'heldout_accuracy' in r]
      fig, ax = plt.subplots(1, 2, figsize=(11, 3))
      ax[0].plot(steps[9:], reward); ax[0].set_xlabel('GRPO step'); ax[0].set_ylabel('rollout reward (mean of 10)')
      ax[1].plot([r['step'] for r in evals], [r['heldout_accuracy'] for r in evals], 'o-')
      ax[1].set_xlabel('GRPO step'); ax[1].set_ylabel('held-out greedy accuracy'); plt.show()
      """),
  ]


@register("07_sharding.ipynb")
def nb07():
  pre_jax = ("# 8 CPU devices when there is no accelerator (set before jax is imported).\n"
             "if 'jax' not in sys.modules:\n"
             "    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +\n"
             "                               ' --xla_force_host_platform_device_count=8').strip()\n")
  return [
      md("""
      # 07 · Sharding: meshes, logical axis rules, and where each parameter lives

      Models in `lm` only *name* their axes (`vocab`, `embed`, `heads`, `mlp`, ...); one
      table of rules in `lm/sharding.py` maps names to mesh axes (`data`, `fsdp`, `tensor`,
      `expert`). Changing the preset changes the layout, never the model. On a CPU runtime
      this notebook fakes 8 devices; on a TPU it uses the cores (with fewer than 8
      accelerator devices it lays out over 8 CPU devices).
      """),
      setup(pre_jax),
      code("""
      import flax.linen as nn
      import jax.numpy as jnp
      import matplotlib.pyplot as plt
      import numpy as np
      from IPython.display import Markdown, display
      from matplotlib.patches import Rectangle
      from lm import sharding
      from lm.models.gpt import GPT, GPTConfig
      from lm.tasks.causal_lm import init_params
      devices = jax.devices() if len(jax.devices()) >= 8 else jax.devices('cpu')
      devices = devices[:8]
      config = GPTConfig(vocab_size=64, num_layers=2, num_heads=4, embed_dim=64, mlp_dim=256, max_len=32)
      model = GPT(config)
      boxed = jax.eval_shape(lambda: init_params(model, 32, 0))
      logical, abstract = nn.get_partition_spec(boxed), nn.meta.unbox(boxed)
      layouts = {'dp': sharding.MeshShape(data=-1), 'fsdp': sharding.MeshShape(data=1, fsdp=-1),
                 'fsdp_tp': sharding.MeshShape(data=1, fsdp=4, tensor=2)}
      meshes = {name: sharding.make_mesh(shape, devices) for name, shape in layouts.items()}
      rules = {name: sharding.make_rules(name) for name in layouts}
      shardings = {name: sharding.tree_shardings(logical, abstract, rules[name], meshes[name])
                   for name in layouts}
      for name, mesh in meshes.items():
          print(f'{name:8} mesh {dict(mesh.shape)}  rules {rules[name]}')
      """),
      md("## Every parameter: its logical axes and its partition spec under each preset"),
      code("""
      flat_logical = jax.tree_util.tree_leaves_with_path(logical, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
      flat_abstract = jax.tree.leaves(abstract)
      flat = {name: jax.tree.leaves(shardings[name]) for name in layouts}
      table = ['| parameter | shape | logical axes | ' + ' | '.join(layouts) + ' |', '|' + ' --- |' * (3 + len(layouts))]
      for i, ((path, spec), leaf) in enumerate(zip(flat_logical, flat_abstract)):
          cells = [jax.tree_util.keystr(path), str(leaf.shape), str(tuple(spec))]
          cells += [str(tuple(flat[name][i].spec)) for name in layouts]
          table.append('| ' + ' | '.join(cells) + ' |')
      display(Markdown('\\n'.join(table)))
      """),
      md("## Memory per device: FSDP and tensor parallelism split what DP replicates"),
      code("""
      per_device = {name: sum(np.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
                              for s, a in zip(flat[name], flat_abstract)) for name in layouts}
      total = sum(a.size * a.dtype.itemsize for a in flat_abstract)
      plt.figure(figsize=(5, 2.5)); plt.bar(list(per_device), [v / 1024 for v in per_device.values()])
      plt.axhline(total / 1024 / 8, ls='--', c='gray', label='total / 8'); plt.legend()
      plt.ylabel('parameter KiB per device'); plt.show()
      """),
      md("""
      ## Where the shards of two matrices live (fsdp_tp: 4-way fsdp x 2-way tensor)
      The parameters are created directly in their layout (`jax.jit(..., out_shardings=...)`);
      each rectangle is one device's shard, labelled with the device id.
      """),
      code("""
      layout = 'fsdp_tp'
      params = jax.jit(lambda: nn.meta.unbox(init_params(model, 32, 0)), out_shardings=shardings[layout])()
      named = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(params)}
      picks = [k for k in named if 'embed' in k and named[k].ndim == 2][:1]
      picks += [k for k in named if 'mlp' in k and named[k].ndim == 2][:1]
      fig, axes = plt.subplots(1, len(picks), figsize=(6 * len(picks), 3.5), squeeze=False)
      colors = plt.cm.tab10(np.arange(10))
      for ax, key in zip(axes[0], picks):
          arr, blocks = named[key], {}
          for shard in arr.addressable_shards:  # replicated blocks sit on several devices
              block = tuple(s.indices(n)[:2] for s, n in zip(shard.index, arr.shape))
              blocks.setdefault(block, []).append(shard.device.id)
          for (rows, cols), ids in blocks.items():
              ax.add_patch(Rectangle((cols[0], rows[0]), cols[1] - cols[0], rows[1] - rows[0],
                                     alpha=0.35, color=colors[ids[0] % 10], ec='k'))
              ax.text((cols[0] + cols[1]) / 2, (rows[0] + rows[1]) / 2, ','.join(map(str, ids)),
                      ha='center', va='center')
          ax.set_xlim(0, arr.shape[1]); ax.set_ylim(arr.shape[0], 0)
          ax.set_title(f'{key} {arr.shape}\\n{arr.sharding.spec}', fontsize=8)
      plt.show()
      """),
      md("The layout changes nothing numerically: the sharded forward pass equals one device's."),
      code("""
      x = np.random.default_rng(0).integers(0, 64, (8, 32)).astype(np.int32)  # host: jit places it
      with jax.set_mesh(meshes[layout]), nn.logical_axis_rules(sharding.flax_rules(rules[layout])):
          sharded = jax.jit(lambda p, x: model.apply({'params': p}, x)[0])(params, x)
      single = jax.device_get(params)
      reference = model.apply({'params': single}, np.asarray(x))[0]
      print('max |sharded - single device| =', float(np.max(np.abs(np.asarray(sharded) - np.asarray(reference)))))
      """),
  ]


def build_all() -> dict:
  return {name: notebook(make()) for name, make in NOTEBOOKS.items()}


def main():
  for name, nb in build_all().items():
    nbformat.validate(nb)
    path = os.path.join(HERE, name)
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
  main()

"""Minimal PyTorch reference for the small char-level GPT CPU training recipe.

Used only by benchmarks: it measures the reference training throughput on the
same machine, so the JAX trainer's speed can be reported as a ratio taken in
one run. The model mirrors ours exactly (same parameter count and FLOPs):
pre-LN blocks, biases on, learned positions, tied embedding/head, dropout 0.

  python experiments/torch_reference.py   # prints one JSON line per config
"""
import json
import math
import time

try:
  import torch
  import torch.nn as nn
  import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the environment
  raise SystemExit("torch_reference: PyTorch is not installed (pip install torch==2.13.0)")


class Block(nn.Module):
  """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.ln1 = nn.LayerNorm(dim)
    self.qkv = nn.Linear(dim, 3 * dim)
    self.attn_out = nn.Linear(dim, dim)  # residual projection
    self.ln2 = nn.LayerNorm(dim)
    self.fc = nn.Linear(dim, 4 * dim)
    self.mlp_out = nn.Linear(4 * dim, dim)  # residual projection

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
    # (b, t, d) -> (b, heads, t, d / heads)
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.attn_out(y.transpose(1, 2).reshape(b, t, d))
    return x + self.mlp_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
  def __init__(self, vocab_size, num_layers, num_heads, embed_dim, seq_len):
    super().__init__()
    self.tok = nn.Embedding(vocab_size, embed_dim)
    self.pos = nn.Embedding(seq_len, embed_dim)
    self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(num_layers))
    self.ln_f = nn.LayerNorm(embed_dim)
    # Init: N(0, 0.02) weights, zero biases (LayerNorm keeps ones/zeros);
    # residual output projections use 0.02 / sqrt(2 * num_layers).
    for m in self.modules():
      if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
      if isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)
    for blk in self.blocks:
      for proj in (blk.attn_out, blk.mlp_out):
        nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * num_layers))

  def forward(self, idx):
    x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
    for blk in self.blocks:
      x = blk(x)
    return self.ln_f(x) @ self.tok.weight.T  # head tied to token embedding


def make_optimizer(model, lr, weight_decay=0.1):
  """AdamW, decaying only >=2-D params (matrices, embeddings); not biases/LN."""
  params = list(model.parameters())
  groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def lr_at(step, lr, min_lr, warmup_steps, decay_steps):
  """Linear warmup to lr, then cosine decay to min_lr at decay_steps."""
  if step < warmup_steps:
    return lr * (step + 1) / warmup_steps
  frac = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (lr - min_lr)


def train_step(model, opt, x, y, autocast_bf16=False):
  """Forward, cross-entropy, backward, clip at 1.0, AdamW step, zero_grad.

  autocast_bf16 runs the forward (and so the matmuls of the backward) under CPU autocast.
  """
  with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
  opt.step()
  opt.zero_grad(set_to_none=True)
  return loss


def make_runner(*, vocab_size=65, num_layers=4, num_heads=4, embed_dim=128, seq_len=64,
                batch_size=12, warmup=10, threads=None, seed=0, autocast_bf16=False):
  """A warmed-up trainer: `run(steps)` trains that many steps on random tokens and
  returns the seconds they took (so a benchmark can interleave it with others)."""
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  model = GPT(vocab_size, num_layers, num_heads, embed_dim, seq_len)
  opt = make_optimizer(model, lr=1e-3)
  model.train()
  done = 0

  def run(steps):
    nonlocal done
    data = torch.randint(0, vocab_size, (steps, batch_size, seq_len + 1))
    start = time.perf_counter()
    for i in range(steps):
      for g in opt.param_groups:
        g["lr"] = lr_at(done + i, 1e-3, 1e-4, warmup_steps=100, decay_steps=10_000)
      train_step(model, opt, data[i, :, :-1], data[i, :, 1:], autocast_bf16)
    done += steps
    return time.perf_counter() - start

  run(warmup)
  run.params = sum(p.numel() for p in model.parameters())
  return run


def measure(*, steps=60, batch_size=12, seq_len=64, **kwargs):
  """Times `steps` full training steps (after the warmup ones) on random tokens."""
  run = make_runner(batch_size=batch_size, seq_len=seq_len, **kwargs)
  elapsed = run(steps)
  return {"ms_per_step": 1000.0 * elapsed / steps,
          "tokens_per_sec": steps * batch_size * seq_len / elapsed,
          "params": run.params, "torch_version": torch.__version__,
          "threads": torch.get_num_threads()}


def train_shakespeare(text_path, *, steps=2000, num_layers=4, num_heads=4, embed_dim=128,
                      seq_len=64, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      threads=None, seed=0):
  """Full recipe on a char-level corpus (first 90% train, last 10% val).

  Returns the final val loss averaged over all non-overlapping val windows.
  """
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  text = open(text_path, encoding="utf-8").read()
  chars = sorted(set(text))
  lookup = {c: i for i, c in enumerate(chars)}
  ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
  split = int(0.9 * len(ids))
  train, val = ids[:split], ids[split:]
  model = GPT(len(chars), num_layers, num_heads, embed_dim, seq_len)
  opt = make_optimizer(model, lr=lr)
  model.train()
  start = time.perf_counter()
  for step in range(steps):
    for g in opt.param_groups:
      g["lr"] = lr_at(step, lr, min_lr, warmup_steps, steps)
    offs = torch.randint(0, len(train) - seq_len - 1, (batch_size,))
    chunk = torch.stack([train[o:o + seq_len + 1] for o in offs.tolist()])
    loss = train_step(model, opt, chunk[:, :-1], chunk[:, 1:])
  train_time = time.perf_counter() - start
  # Evaluate on every non-overlapping window of the val split.
  model.eval()
  n_win = (len(val) - 1) // seq_len
  xs = val[:n_win * seq_len].view(n_win, seq_len)
  ys = val[1:n_win * seq_len + 1].view(n_win, seq_len)
  total = 0.0
  with torch.no_grad():
    for i in range(0, n_win, 256):
      logits = model(xs[i:i + 256])
      total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys[i:i + 256].reshape(-1),
                               reduction="sum").item()
  return {"val_loss": total / (n_win * seq_len), "last_train_loss": loss.item(),
          "train_seconds": train_time, "steps": steps,
          "params": sum(p.numel() for p in model.parameters()), "torch_version": torch.__version__}


if __name__ == "__main__":
  print(json.dumps(measure()))
  print(json.dumps(measure(num_layers=6, num_heads=6, embed_dim=384, seq_len=256, batch_size=8,
                           steps=20, warmup=3)))

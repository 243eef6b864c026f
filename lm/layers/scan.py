"""Linear recurrences h_t = a_t * h_{t-1} + b_t, all steps at once with a parallel scan.

Legend: B batch, T time, R recurrence width.

The map h -> a h + b composes associatively: applying (a1, b1) then (a2, b2) is
(a1 a2, a2 b1 + b2). `jax.lax.associative_scan` evaluates all T prefixes of that
composition in O(log T) sequential depth (Blelloch 1990), which is what lets diagonal
linear RNNs and state-space models (LRU, S5, Mamba, Griffin) train like Transformers.
"""

import jax
import jax.numpy as jnp


def _compose(left, right):
  a_left, b_left = left
  a_right, b_right = right
  return a_left * a_right, a_right * b_left + b_right


def linear_recurrence(a_BTR, b_BTR, h0_BR=None):
  """All states h_BTR of h_t = a_t * h_{t-1} + b_t from h_{-1} = h0 (zeros if None)."""
  if a_BTR.shape != b_BTR.shape or a_BTR.ndim != 3:
    raise ValueError(f"a and b must both be (B, T, R), got {a_BTR.shape} and {b_BTR.shape}")
  if h0_BR is not None:  # fold the initial state into the first input
    b_BTR = b_BTR.at[:, 0].add(a_BTR[:, 0] * h0_BR)
  _, h_BTR = jax.lax.associative_scan(_compose, (a_BTR, b_BTR), axis=1)
  return h_BTR


def linear_recurrence_step(a_BR, b_BR, h_BR):
  """One step of the same recurrence: the O(1)-state decoding form."""
  return a_BR * h_BR + b_BR


def sequential_recurrence(a_BTR, b_BTR, h0_BR=None):
  """The same recurrence with a sequential `lax.scan` (O(T) depth); a reference."""
  h0_BR = jnp.zeros_like(a_BTR[:, 0]) if h0_BR is None else h0_BR

  def step(h_BR, ab):
    h_BR = linear_recurrence_step(*ab, h_BR)
    return h_BR, h_BR

  _, h_TBR = jax.lax.scan(step, h0_BR, (a_BTR.swapaxes(0, 1), b_BTR.swapaxes(0, 1)))
  return h_TBR.swapaxes(0, 1)

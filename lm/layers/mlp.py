"""Position-wise feed-forward networks. Legend: B batch, T length, D model, F hidden.

gelu:   W_o gelu(W_i x)                          (GPT-2, BERT)
swiglu: W_o (silu(W_g x) * W_u x)                (Shazeer 2020; LLaMA)
geglu:  W_o (gelu(W_g x) * W_u x)                (Shazeer 2020; T5 v1.1, Gemma)
"""

import functools

import flax.linen as nn
import jax

from lm.layers import init
from lm.layers.precision import dot_general_for

ACTIVATIONS = {"gelu": jax.nn.gelu, "swiglu": jax.nn.silu, "geglu": jax.nn.gelu,
               # erf GELU (BERT as published, HF "gelu"); "gelu" is the tanh approximation
               "gelu_exact": functools.partial(jax.nn.gelu, approximate=False)}
GATED = ("swiglu", "geglu")


class MLP(nn.Module):
  hidden_dim: int
  num_layers_for_init: int = 1  # scales the output projection init (GPT-2)
  use_bias: bool = True
  matmul_dtype: str = "float32"
  activation: str = "gelu"  # gelu | swiglu | geglu

  def _dense(self, features: int, names: tuple[str, str], stddev: float, name: str):
    return nn.Dense(features, use_bias=self.use_bias,
                    dot_general=dot_general_for(self.matmul_dtype),
                    kernel_init=init.normal(stddev, names), bias_init=init.zeros(names[1:]),
                    name=name)

  @nn.compact
  def __call__(self, x_BTD):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"mlp activation {self.activation!r}; known: {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[self.activation]
    wide = ("embed", "mlp")
    if self.activation in GATED:
      h_BTF = act(self._dense(self.hidden_dim, wide, init.DEFAULT_STDDEV, "wi_gate")(x_BTD)) \
          * self._dense(self.hidden_dim, wide, init.DEFAULT_STDDEV, "wi_up")(x_BTD)
    else:
      h_BTF = act(self._dense(self.hidden_dim, wide, init.DEFAULT_STDDEV, "wi")(x_BTD))
    h_BTF = nn.with_logical_constraint(h_BTF, ("batch", "length", "act_mlp"))
    out_stddev = init.DEFAULT_STDDEV / (2 * self.num_layers_for_init) ** 0.5
    return self._dense(x_BTD.shape[-1], ("mlp", "embed"), out_stddev, "wo")(h_BTF)

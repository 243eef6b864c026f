"""Position-wise feed-forward network. Legend: B batch, T length, D model, F hidden."""

import flax.linen as nn
import jax

from lm.layers import init
from lm.layers.precision import dot_general_for


class MLP(nn.Module):
  hidden_dim: int
  num_layers_for_init: int = 1
  use_bias: bool = True
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BTD):
    d_model = x_BTD.shape[-1]
    h_BTF = nn.Dense(self.hidden_dim, use_bias=self.use_bias,
                     dot_general=dot_general_for(self.matmul_dtype),
                     kernel_init=init.normal(init.DEFAULT_STDDEV, ("embed", "mlp")),
                     bias_init=init.zeros(("mlp",)), name="wi")(x_BTD)
    h_BTF = nn.with_logical_constraint(jax.nn.gelu(h_BTF), ("batch", "length", "mlp"))
    out_stddev = init.DEFAULT_STDDEV / (2 * self.num_layers_for_init) ** 0.5
    return nn.Dense(d_model, use_bias=self.use_bias,
                    dot_general=dot_general_for(self.matmul_dtype),
                    kernel_init=init.normal(out_stddev, ("mlp", "embed")),
                    bias_init=init.zeros(("embed",)), name="wo")(h_BTF)

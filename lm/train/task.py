"""What a training run needs besides the model and the optimizer: a `Task`.

The loop in lm/train/trainer.py is objective-agnostic. A task (lm/tasks/) reads its
data, builds the tokenizer, and supplies the batches, the loss function, how to
initialise the model and, optionally, what to show at the end (a text sample).
Causal LM, masked LM + NSP, span corruption and seq2seq are all tasks.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

LossFn = Callable[..., tuple[Any, dict]]  # (params, batch, rng, deterministic) -> (loss, metrics)


@dataclasses.dataclass
class Task:
  tokenizer: Any  # saved as WORKDIR/tokenizer.json (`.save(path)`, `.kind`, `.vocab_size`)
  train_iter: Any  # endless, checkpointable iterator of batches (`get_state`/`set_state`)
  eval_batches: list  # fixed batches covering the validation data once
  tokens_per_step: int  # for tokens/s
  make_loss: Callable[[Any], LossFn]  # model -> loss_fn
  # (model, seed) -> params; return model.init's boxed params (logical axis names kept)
  # so the trainer can shard them; it jits, places and unboxes.
  init_params: Callable[[Any, int], Any]
  sample: Callable[[Any, Any], str] | None = None  # (model, params) -> text for the summary
  # (model, params) -> extra metrics for summary.json at the end of training, e.g. exact
  # match of generated outputs (decoding is too slow for every eval).
  final_metrics: Callable[[Any, Any], dict] | None = None
  save_files: Callable[[str], None] | None = None  # writes task files into the workdir
  # Eval metrics are averaged weighted by a count the loss function also returns:
  # metric name -> count name; metrics not listed use "num_tokens".
  eval_weights: Mapping[str, str] = dataclasses.field(default_factory=dict)
  # A task whose loss carries state from one step to the next (truncated BPTT) brings
  # its own train state and scanned step; None: TrainState and make_multi_step.
  create_state: Callable[[Any, Any, Any], Any] | None = None  # (model, params, tx) -> state
  make_multi_step: Callable[[LossFn, Any], Any] | None = None  # (loss_fn, tx) -> multi_step
  # Where a pretrained model's parameters sit in this task's params (config.init_from):
  # () = the params are the model's; ("backbone",) for a head wrapping it.
  pretrained_at: tuple[str, ...] = ()

"""ICL tasks as example generators: the string family and the lecture's addition.

An `ICLTask` draws held-out `Example`s (query, answer, options). The string family's
options for an input are the distinct outputs of every task of the suite on it, so
option scoring asks "which of these transformations is meant?".
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from lm.data import addition
from lm.icl import string_tasks
from lm.icl.prompts import Example

SEPARATOR = " -> "


@dataclasses.dataclass(frozen=True)
class ICLTask:
  name: str
  group: str  # "train": the model trained on this task; "heldout": it never did
  description: str | None  # None: no description prompt for this task
  sample: Callable[[np.random.Generator, int], list[Example]]  # n held-out examples


def string_example(task: string_tasks.StringTask, text: str, separator: str,
                   option_tasks: Sequence[string_tasks.StringTask] = ()) -> Example:
  answer = task(text)
  options = sorted({answer} | {t(text) for t in option_tasks})
  return Example(text + separator, answer, tuple(options))


def string_suite(train: str, heldout: str = "", *, separator: str = SEPARATOR,
                 min_len: int = 3, max_len: int = 6) -> list[ICLTask]:
  """Tasks named in the comma lists `train` and `heldout`; queries are held-out inputs."""
  groups = [("train", string_tasks.parse_task_list(train)),
            ("heldout", string_tasks.parse_task_list(heldout))]
  everything = [t for _, tasks in groups for t in tasks]

  def sampler(task):
    def sample(rng, n):
      inputs = string_tasks.sample_inputs(rng, n, min_len, max_len, held_out=True)
      return [string_example(task, x, separator, everything) for x in inputs]
    return sample

  return [ICLTask(t.name, group, t.description, sampler(t)) for group, tasks in groups
          for t in tasks]


def addition_suite(num_digits: int) -> list[ICLTask]:
  """"Q: What is a plus b? A: " -> "<answer>a+b</answer>", on held-out operand pairs.

  Options: the true sum and sums off by 1, 10 and 100 (the likely slips). No description
  prompt: the template's character set has no room for one.
  """
  def sample(rng, n):
    out = []
    for a, b in addition.sample_pairs(rng, n, num_digits, held_out=True):
      a, b = int(a), int(b)
      sums = sorted({a + b + d for d in (0, 1, -1, 10, -10, 100, -100) if a + b + d >= 0})
      out.append(Example(addition.prompt_text(a, b), addition.response_text(a, b),
                         tuple(f"<answer>{s}</answer>" for s in sums)))
    return out

  return [ICLTask(f"addition_{num_digits}d", "train", None, sample)]

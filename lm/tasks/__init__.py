"""Training tasks by name: `task -> (task config dataclass, builder)`.

A builder is `build(config, workdir) -> (config, Task)`: it reads the data, builds or
reloads the tokenizer, fills in what the config leaves to the data (the vocab size)
and returns the `lm.train.task.Task` the training loop runs.
"""

import importlib

from lm.errors import UserError

# name -> (module, config class name); imported lazily so lm.config stays light.
_TASKS = {
    "causal_lm": ("lm.tasks.causal_lm", "CausalLMConfig"),
}


def task_names() -> list[str]:
  return sorted(_TASKS)


def _module(name: str):
  if name not in _TASKS:
    raise UserError(f"unknown task {name!r}; known: {task_names()}")
  return importlib.import_module(_TASKS[name][0])


def task_config_class(name: str):
  return getattr(_module(name), _TASKS[name][1])


def build_task(config, workdir: str):
  return _module(config.task).build(config, workdir)

"""The ICL harness: accuracy vs k for zero-, one-, k-shot and description-only prompts.

For every task, `num_eval` held-out queries are drawn once, each with `max(shots)`
demonstrations; the k-shot prompt of a query uses its first k demonstrations, so all
conditions see the same queries and the k-shot demos extend the (k-1)-shot ones. Two
scorers (lm/icl/scoring.py):
- `generate`: greedy decoding; right iff the completion is exactly the answer, then END.
- `choice`: the option with the highest log p(option + END | prompt) is the answer.
A condition that cannot be asked (a character outside the model's vocabulary, a prompt
longer than `model.max_len`, no description) is reported as n/a with the reason.
"""

import zlib
from collections.abc import Sequence

import numpy as np

from lm.errors import UserError
from lm.icl.prompts import END, build_prompt
from lm.icl.scoring import continuation_logprobs, greedy_continuations
from lm.icl.suites import ICLTask

METHODS = ("generate", "choice")
DESCRIPTION = "description"  # the zero-shot-with-description condition


def conditions(shots: Sequence[int], description: bool = True) -> list[str]:
  return [f"k={k}" for k in shots] + ([DESCRIPTION] if description else [])


def _draw(task: ICLTask, num_eval: int, max_k: int, seed: int):
  """num_eval queries, each with max_k demonstrations; deterministic in (seed, task)."""
  rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
  examples = task.sample(rng, num_eval * (max_k + 1))
  queries = examples[:num_eval]
  demos = [examples[num_eval + i * max_k:num_eval + (i + 1) * max_k] for i in range(num_eval)]
  return queries, demos


def _prompt(task: ICLTask, condition: str, query, demos) -> str | None:
  if condition == DESCRIPTION:
    return None if task.description is None else build_prompt([], query, task.description)
  return build_prompt(demos[:int(condition[2:])], query)


def _requests(model, tokenizer, tasks, shots, num_eval, seed, method, description):
  """(task, condition, prompt ids, example) for every askable query; reasons for the rest."""
  max_len, max_k = model.config.max_len, max(shots)
  requests, notes = [], {}
  for task in tasks:
    queries, demos = _draw(task, num_eval, max_k, seed)
    for cond in conditions(shots, description):
      cell = []
      for query, query_demos in zip(queries, demos):
        text = _prompt(task, cond, query, query_demos)
        if text is None:
          notes[task.name, cond] = "the task has no description"
          break
        try:
          ids = tokenizer.encode(text)
          answers = [tokenizer.encode(a + END) for a in (query.options if method == "choice"
                                                          else (query.answer,))]
        except UserError as e:
          notes[task.name, cond] = str(e).split(" (")[0]
          break
        if len(ids) + (max(map(len, answers)) if method == "choice" else 0) > max_len:
          notes[task.name, cond] = f"prompt longer than model.max_len={max_len}"
          break
        cell.append((task.name, cond, ids, query))
      else:
        requests.extend(cell)
  return requests, notes


def _score_generate(model, params, tokenizer, requests) -> list[tuple[bool, str]]:
  budget = max(len(tokenizer.encode(r[3].answer + END)) for r in requests)
  outs = greedy_continuations(model, params, [r[2] for r in requests], budget)
  results = []
  for (_, _, _, query), ids in zip(requests, outs):
    text, end, _ = tokenizer.decode(ids).partition(END)
    results.append((bool(end) and text == query.answer, text))
  return results


def _score_choice(model, params, tokenizer, requests) -> list[tuple[bool, str]]:
  prompts, conts = [], []
  for _, _, ids, query in requests:
    for option in query.options:
      prompts.append(ids)
      conts.append(tokenizer.encode(option + END))
  scores = continuation_logprobs(model, params, prompts, conts)
  results, offset = [], 0
  for _, _, _, query in requests:
    n = len(query.options)
    said = query.options[int(np.argmax(scores[offset:offset + n]))]
    results.append((said == query.answer, said))
    offset += n
  return results


def evaluate(model, params, tokenizer, tasks: Sequence[ICLTask], *,
             shots: Sequence[int] = (0, 1, 2, 4, 8), num_eval: int = 32, seed: int = 0,
             method: str = "generate", description: bool = True) -> dict:
  """Accuracy per task and condition, and means per group ("train" / "heldout")."""
  if method not in METHODS:
    raise UserError(f"ICL method {method!r}; choose one of {METHODS}")
  if not shots or min(shots) < 0 or num_eval <= 0:
    raise UserError(f"shots must be non-negative ({list(shots)}) and num_eval positive")
  if not tasks:
    raise UserError("no ICL tasks to evaluate")
  requests, notes = _requests(model, tokenizer, tasks, shots, num_eval, seed, method,
                              description)
  score = _score_generate if method == "generate" else _score_choice
  scored = score(model, params, tokenizer, requests) if requests else []
  right: dict[tuple[str, str], list[bool]] = {}
  samples = {}
  for (name, cond, ids, query), (ok, said) in zip(requests, scored):
    right.setdefault((name, cond), []).append(ok)
    if (name, cond) not in samples:
      samples[name, cond] = {"prompt": tokenizer.decode(ids), "answer": query.answer,
                             "output": said}
  conds = conditions(shots, description)
  per_task = {}
  for task in tasks:
    per_task[task.name] = {
        "group": task.group, "description": task.description,
        "accuracy": {c: float(np.mean(right[task.name, c])) if (task.name, c) in right
                     else None for c in conds},
        "n/a": {c: notes[task.name, c] for c in conds if (task.name, c) in notes},
        "samples": {c: samples[task.name, c] for c in conds if (task.name, c) in samples}}
  means = {}
  for group in dict.fromkeys(t.group for t in tasks):  # in order of appearance
    means[group] = {}
    for c in conds:
      values = [per_task[t.name]["accuracy"][c] for t in tasks if t.group == group]
      values = [v for v in values if v is not None]
      means[group][c] = float(np.mean(values)) if values else None
  return {"method": method, "shots": list(shots), "num_eval": num_eval, "seed": seed,
          "conditions": conds, "tasks": per_task, "means": means}


def flat_metrics(results: dict, prefix: str = "icl") -> dict:
  """{icl_train_k0: ..., icl_heldout_description: ...} for summary.json."""
  out = {}
  for group, values in results["means"].items():
    for cond, value in values.items():
      out[f"{prefix}_{group}_{cond.replace('=', '')}"] = value
  return out


GROUP_NAMES = {"train": "training tasks, held-out inputs", "heldout": "held-out tasks"}


def _fmt(value) -> str:
  return "n/a" if value is None else f"{value:.2f}"


def format_table(results: dict) -> str:
  """Markdown: one row per task, then the mean of each group; columns are conditions."""
  conds = results["conditions"]
  head = ["task", "group"] + [c if c != DESCRIPTION else "description only" for c in conds]
  lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * len(head)) + " |"]
  for name, task in results["tasks"].items():
    cells = [_fmt(task["accuracy"][c]) for c in conds]
    lines.append(f"| {name} | {task['group']} | " + " | ".join(cells) + " |")
  for group, values in results["means"].items():
    cells = [f"**{_fmt(values[c])}**" for c in conds]
    lines.append(f"| **mean** | {GROUP_NAMES.get(group, group)} | " + " | ".join(cells) + " |")
  notes = sorted({f"{c}: {why}" for t in results["tasks"].values() for c, why in
                  t["n/a"].items()})
  footer = [f"\n{results['method']} accuracy, {results['num_eval']} held-out queries per cell "
            f"(seed {results['seed']})."]
  if notes:
    footer.append("n/a: " + "; ".join(notes) + ".")
  return "\n".join(lines + footer) + "\n"

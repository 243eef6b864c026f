"""docs/lecture_map.md names only code that exists, and every lecture concept has a row."""

import os
import re

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAP = os.path.join(REPO_ROOT, "docs", "lecture_map.md")
ROOTS = ("lm/", "configs/", "experiments/", "tests/", "colab/", "docs/")
IN_PROGRESS = "(in progress)"


def _rows() -> list[list[str]]:
  """The table rows (cells) of every concept table, header and rule lines skipped."""
  rows = []
  with open(MAP) as f:
    for line in f:
      if not line.startswith("| ") or line.startswith("| concept") or line.startswith("| ---"):
        continue
      rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
  return rows


def _paths(cell: str) -> list[str]:
  return [t for t in re.findall(r"`([^`]+)`", cell) if t.startswith(ROOTS)]


def _defines(path: str, name: str) -> bool:
  with open(os.path.join(REPO_ROOT, path)) as f:
    source = f.read()
  return re.search(rf"^(def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]", source,
                   re.M) is not None


def test_every_row_has_a_module_a_config_and_a_test_or_notebook():
  rows = _rows()
  assert len(rows) >= 40
  for concept, module, config, shown in rows:
    assert all(len(c) > 0 for c in (concept, module, config, shown)), concept
    if IN_PROGRESS in concept:
      continue
    assert any(p.startswith("lm/") or p.startswith("experiments/") for p in _paths(module)), concept
    assert any(p.startswith(("tests/", "colab/")) for p in _paths(shown)), concept


def test_every_path_and_name_exists():
  missing = []
  for row in _rows():
    if IN_PROGRESS in row[0]:
      continue
    for cell in row[1:]:
      for token in _paths(cell):
        path, _, name = token.partition("::")
        if not os.path.exists(os.path.join(REPO_ROOT, path)):
          missing.append(token)
        elif name and not _defines(path, name):
          missing.append(token)
  assert not missing, f"docs/lecture_map.md names what does not exist: {missing}"


def test_the_lecture_concepts_are_all_covered():
  concepts = " ".join(row[0] for row in _rows()).lower()
  for word in ("probability distribution", "chain rule", "perplexity", "tokenization", "n-gram",
               "lstm", "attention", "positional", "masks", "block", "encoder-only",
               "decoder-only", "encoder-decoder", "objectives", "sampling", "kv cache", "sparse",
               "mixture of experts", "scaling laws", "lora", "bitfit", "in-context", "sft",
               "dpo", "grpo", "distillation", "duplicate", "contamination",
               "data parallelism", "tensor parallelism", "expert parallelism",
               "mixed precision"):
    assert word in concepts, word


def test_the_checker_catches_a_missing_path_and_a_missing_name():
  assert not os.path.exists(os.path.join(REPO_ROOT, "lm/no_such_module.py"))
  assert _defines("lm/sampling.py", "sample_logits")
  assert not _defines("lm/sampling.py", "no_such_function")

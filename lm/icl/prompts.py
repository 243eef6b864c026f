"""The one prompt format: an optional description line, k demonstrations, the query.

  task: reverse the letters        <- only in description prompts
  abc -> cba                       <- k demonstrations, each `query + answer + END`
  hello -> olleh
  xyz ->                           <- the query; the model should continue "zyx" + END

Training sequences (lm/tasks/icl_strings.py) are built from the same pieces, so the
evaluation format is exactly the training format.
"""

import dataclasses
from collections.abc import Sequence

END = "\n"  # ends every answer (and is the addition template's EOS)
DESCRIPTION_PREFIX = "task: "


@dataclasses.dataclass(frozen=True)
class Example:
  query: str  # the rendered query, e.g. "abc -> " or "Q: What is 5 plus 7? A: "
  answer: str  # what should follow the query, before END
  options: tuple[str, ...] = ()  # candidate answers for option scoring (answer included)


def demonstration(example: Example) -> str:
  return example.query + example.answer + END


def description_line(description: str) -> str:
  return DESCRIPTION_PREFIX + description + END


def build_prompt(demos: Sequence[Example], query: Example, description: str | None = None) -> str:
  """Zero-shot (no demos), one-shot, k-shot; with `description`, a task line first."""
  head = description_line(description) if description is not None else ""
  return head + "".join(demonstration(d) for d in demos) + query.query

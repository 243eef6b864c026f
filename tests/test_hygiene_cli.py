"""The hygiene command lines, run as a user would: outputs on hand-made files, and one
`error:` line with status 2 for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "the answer to the riddle of the sphinx is man who walks on four legs at dawn"


def cli(module: str, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *map(str, args)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def assert_user_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("hygiene")
  (root / "train.txt").write_text(
      "Chapter one.\n\nSome filler text about nothing in particular.\n\n"
      f"He said: {SECRET.upper()}!\n\nThe end.\n")
  rows = [{"id": 0, "text": "A question nobody has asked before, about quiet rivers."},
          {"id": 1, "text": f"Q: {SECRET}?"},
          {"id": 2, "text": "The end."}]  # shorter than 13 words, appears whole
  (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (root / "dups.txt").write_text("one two three four five six\n\nOne, two, three four five six!\n\n"
                                 "something else entirely\n\nONE TWO THREE FOUR FIVE SIX\n")
  return root


def test_contamination_cli(files):
  proc = cli("contamination", f"--train={files / 'train.txt'}", f"--eval={files / 'eval.jsonl'}",
             "--eval_format=jsonl", f"--report={files / 'report.json'}",
             f"--clean={files / 'clean.jsonl'}")
  assert proc.returncode == 0, proc.stderr
  assert "2 of 3 eval examples" in proc.stdout
  report = json.loads((files / "report.json").read_text())
  assert [e["dirty"] for e in report["examples"]] == [False, True, True]
  assert report["summary"]["dirty"] == 2
  assert report["examples"][1]["first_overlap"] == " ".join(SECRET.split()[:13])
  assert report["examples"][2]["first_overlap"] == "the end"
  clean = [json.loads(line) for line in (files / "clean.jsonl").read_text().splitlines()]
  assert clean == [{"id": 0, "text": "A question nobody has asked before, about quiet rivers."}]


def test_dedup_cli(files):
  out = files / "dedup.txt"
  proc = cli("dedup", f"--input={files / 'dups.txt'}", f"--output={out}",
             f"--report={files / 'dedup.json'}")
  assert proc.returncode == 0, proc.stderr
  assert out.read_text() == "one two three four five six\n\nsomething else entirely\n"
  report = json.loads((files / "dedup.json").read_text())
  assert report["clusters"] == [{"kept": 0, "removed": [1, 3]}]
  assert report["exact_duplicates"] == 2


def test_corpus_stats_cli(files):
  text = (files / "dups.txt").read_text()
  (files / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": sorted(set(text))}))
  proc = cli("corpus_stats", f"--input={files / 'dups.txt'}", "--ngrams=1,6",
             f"--tokenizer={files / 'tokenizer.json'}")
  assert proc.returncode == 0, proc.stderr
  stats = json.loads(proc.stdout)
  assert stats["words"] == 21 and stats["documents"] == 4
  assert stats["ngrams"]["1"]["unique"] == 9  # one..six, something, else, entirely
  assert stats["ngrams"]["6"] == {"total": 3, "unique": 1, "unique_fraction": 1 / 3}
  assert stats["dedup"]["effective_words"] == 9
  # Char tokens of the kept paragraphs: "one two three four five six", "something else entirely".
  assert stats["tokens"] == stats["characters"]
  assert stats["dedup"]["effective_tokens"] == len("one two three four five six") + len(
      "something else entirely")


@pytest.mark.parametrize("module,args,needles", [
    ("contamination", ["--train=/no/such.txt", "--eval=/no/such.txt"], ["not found"]),
    ("contamination", ["--eval=x"], ["--train"]),
    ("contamination", ["--train=T", "--eval=E", "--n=0"], ["--n"]),
    ("contamination", ["--train=T", "--eval=E", "--n=big"], ["--n", "'big'"]),
    ("contamination", ["--train=T", "--eval=B", "--eval_format=jsonl"], ["bad.jsonl:1"]),
    ("dedup", ["--input=D", "--threshold=2"], ["threshold"]),
    ("dedup", ["--input=D", "--format=csv"], ["--format"]),
    ("dedup", ["--input=D", "--output=/no/such/dir/out.txt"], ["does not exist"]),
    ("corpus_stats", ["--input=D", "--ngrams=x"], ["--ngrams"]),
    ("corpus_stats", ["--input=D", "stray"], ["unexpected arguments"]),
    ("corpus_stats", ["--input=D", "--tokenizer=/no/tokenizer.json"], ["tokenizer file not found"]),
])
def test_bad_input(files, module, args, needles):
  (files / "bad.jsonl").write_text("not json\n")
  names = {"T": files / "train.txt", "E": files / "eval.jsonl", "B": files / "bad.jsonl",
           "D": files / "dups.txt"}
  args = [a[:-1] + str(names[a[-1]]) if a[-1] in names and a[-2] == "=" else a for a in args]
  assert_user_error(cli(module, *args), *needles)

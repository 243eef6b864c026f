"""docs/reproductions.md is generated, never typed; the measurement scripts measure."""

import math
import os

import numpy as np
import pytest

from experiments.reproduce import bert_masking, report, sparse_flops
from experiments.reproduce.claims import CLAIMS, REPO_ROOT


def test_committed_page_equals_the_generator_output():
  with open(report.PAGE) as f:
    assert f.read() == report.render(), "run: python -m experiments.reproduce.report"


def test_every_claim_is_complete_and_measured_unless_marked_pending():
  keys = [c.key for c in CLAIMS]
  assert len(keys) == len(set(keys))
  for claim in CLAIMS:
    assert claim.claim and claim.source and claim.command and claim.rule and claim.files
    present = all(os.path.exists(os.path.join(REPO_ROOT, f)) for f in claim.files)
    assert present or claim.pending, f"{claim.key}: results missing and not marked pending"
    if present:
      measured, verdict, hardware = report._row(claim)
      assert measured and hardware
      assert verdict in ("reproduced", "partly reproduced", "not reproduced")


def test_the_lecture_topics_are_all_there():
  keys = {c.key for c in CLAIMS}
  assert {"lecture_table", "kv_cache", "sparse_attention", "bert_masking", "peft_fractions",
          "few_shot", "scaling", "aux_free_balance", "mtp", "mla_cache", "grpo",
          "distillation"} <= keys


def test_sparse_flops_match_the_closed_form_at_a_small_size():
  r = sparse_flops.measure(T=256, w=32, s=16, heads=2, head_dim=16)
  # Scores computed: dense T^2; local blocks T * 2w; strided s * (T/s)^2.
  assert r["local"]["flops_ratio"] == pytest.approx(256 / 64, rel=0.05)
  assert r["strided"]["flops_ratio"] == pytest.approx(16, rel=0.05)
  assert r["local"]["max_abs_diff"] < 1e-5 and r["strided"]["max_abs_diff"] < 1e-5


def test_bert_masking_counts_are_binomially_consistent_with_the_paper():
  r = bert_masking.measure(30)
  c = r["counts"]
  for key, n in (("selected_fraction", c["maskable"]), ("mask_fraction", c["selected"]),
                 ("unchanged_fraction", c["selected"]), ("is_next_fraction", c["pairs"])):
    p = r["expected"][key]
    assert abs(r[key] - p) < 5 * math.sqrt(p * (1 - p) / n), key
  assert c["masked"] + c["random"] + c["unchanged"] == c["selected"]


@pytest.mark.slow
def test_kv_cache_decoding_is_identical_and_cheaper():
  from experiments.reproduce import kv_cache
  r = kv_cache.measure(prompt_len=4, new_tokens=28, repeats=1)
  assert r["greedy_tokens_equal"]
  # one cached token vs a forward over the full 32-token buffer: about 32x the FLOPs
  assert 16 < r["flops_ratio"] < 40
  assert np.isfinite(r["speedup"])


def test_the_pending_peft_claim_reads_an_adaptation_table():
  # The row format experiments/adaptation_table.py writes to table.json.
  claim = next(c for c in CLAIMS if c.key == "peft_fractions")
  table = [{"rows": [{"method": "full", "trainable_fraction": 1.0, "val_accuracy": 0.5},
                     {"method": "lora", "trainable_fraction": 0.004, "val_accuracy": 0.4},
                     {"method": "bitfit", "trainable_fraction": 0.002, "val_accuracy": 0.3}]}]
  assert "lora 0.400%" in claim.measured(table) and "bitfit 0.200%" in claim.measured(table)
  assert claim.verdict(table) == "reproduced"
  table[0]["rows"][1]["trainable_fraction"] = 0.05
  assert claim.verdict(table) == "partly reproduced"


def test_the_pending_icl_claim_reads_an_icl_evaluation():
  # The layout experiments/icl.py writes to icl.json (lm/icl/harness.py `evaluate`).
  claim = next(c for c in CLAIMS if c.key == "few_shot")
  means = {"train": {"k=0": 0.1, "k=4": 0.6}, "heldout": {"k=0": 0.0, "k=4": 0.3}}
  data = [{"generate": {"shots": [0, 4], "means": means}}]
  assert claim.measured(data) == ("greedy exact match: train 0.10 at k=0 -> 0.60 at k=4; "
                                  "heldout 0.00 at k=0 -> 0.30 at k=4")
  assert claim.verdict(data) == "reproduced"
  means["heldout"]["k=4"] = 0.0
  assert claim.verdict(data) == "partly reproduced"

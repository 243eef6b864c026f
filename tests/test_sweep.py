"""The sweep runner: the declared grids, ETA arithmetic, bad configs, and a resumable smoke sweep."""

import importlib
import json
import os

import numpy as np
import pytest

from experiments import sweep as sweep_exp
from lm.errors import UserError
from lm.scaling import sweep as sweep_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(name: str, arg=None):
  return sweep_exp.parse_config(importlib.import_module(f"configs.{name}").get_config(arg)
                                .to_dict())


def test_main_grid_spans_the_issue_ranges():
  runs = sweep_lib.plan(_sweep("scaling_sweep"))
  sizes = {r.size: r.non_embedding_params for r in runs}
  budgets = {r.tokens for r in runs}
  assert len(sizes) >= 6 and max(sizes.values()) / min(sizes.values()) >= 30
  assert len(budgets) >= 4
  assert len(runs) == len(sizes) * len(budgets)  # the full grid


def test_shape_grid_holds_n_and_varies_aspect_ratio():
  runs = sweep_lib.plan(_sweep("scaling_shape"))
  n = np.array([r.non_embedding_params for r in runs])
  aspect = [r.config["model"]["embed_dim"] / r.config["model"]["num_layers"] for r in runs]
  assert np.all(np.abs(n / np.median(n) - 1) < 0.06)
  assert max(aspect) / min(aspect) >= 8
  assert len({r.tokens for r in runs}) == 1


def test_isoflop_runs_spend_their_budget():
  sweep = _sweep("scaling_isoflop")
  runs = sweep_lib.plan(sweep)
  assert len({r.budget for r in runs}) >= 3
  for r in runs:
    steps = r.config["train"]["num_steps"]
    assert sweep.min_steps <= steps <= sweep.max_steps
    # whole scans of 25 steps of 16 x 64 tokens: off the budget by at most half a scan
    assert steps % 25 == 0
    assert abs(r.flops_6nd / r.budget - 1) <= 12.5 / steps + 1e-12
  for budget in {r.budget for r in runs}:
    assert sum(r.budget == budget for r in runs) >= 5  # enough sizes for a parabola


def test_run_configs_are_tuned_per_run():
  for r in sweep_lib.plan(_sweep("scaling_sweep")):
    steps, o = r.config["train"]["num_steps"], r.config["optim"]
    assert r.config["train"]["eval_every"] == steps
    assert o["warmup_steps"] == max(1, round(0.05 * steps))
    assert o["min_lr"] == pytest.approx(o["lr"] / 10)
    assert r.tokens == steps * 16 * 64
    assert steps % r.config["train"]["steps_per_call"] == 0  # one compiled scan length


def test_eta_fits_overhead_plus_cost():
  # 1 + 2 f through (1, 3) and (3, 7): 5 FLOPs left cost 11 s, 5 + 0 FLOPs cost 11 + 1
  assert sweep_lib.eta_seconds([(1, 3), (3, 7)], [5]) == pytest.approx(11)
  assert sweep_lib.eta_seconds([(1, 3), (3, 7)], [5, 0]) == pytest.approx(12)
  assert sweep_lib.eta_seconds([(2, 4)], [3]) == pytest.approx(6)  # one size: proportional
  # Nearly equal FLOPs (a shape sweep) leave the slope undetermined: proportional too.
  assert sweep_lib.eta_seconds([(100, 10), (101, 30)], [100]) == pytest.approx(100 * 40 / 201)
  assert sweep_lib.eta_seconds([], []) == 0
  assert sweep_lib.format_duration(3725) == "1h02m" and sweep_lib.format_duration(65) == "1m05s"


def test_human_units():
  assert [sweep_lib.human(x) for x in (250_000, 1e6, 2e12, 12)] == ["250k", "1M", "2T", "12"]


@pytest.mark.parametrize("edit, message", [
    (lambda v: v.pop("sweep"), "'sweep' section"),
    (lambda v: v["sweep"].update(modles=[]), "sweep.modles"),
    (lambda v: v["sweep"].update(models=[{"model.num_layerz": 2}]), "num_layerz"),
    (lambda v: v["sweep"].update(models=[{"modle.num_layers": 2}]), "modle"),
    (lambda v: v["sweep"].update(flops=[1e9]), "exactly one of"),
    (lambda v: v["sweep"].update(models=[]), "empty"),
    (lambda v: v["sweep"].update(models=[{"model.num_layers": 1, "model.embed_dim": 30,
                                          "model.num_heads": 4}]), "divisible"),
])
def test_bad_sweep_configs_are_one_line_user_errors(edit, message):
  values = importlib.import_module("configs.scaling_sweep").get_config("smoke").to_dict()
  edit(values)
  with pytest.raises(UserError, match=message) as e:
    sweep_exp.parse_config(values)
  assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
  """One tiny run (the smoke config's first size and budget) on 20 KB of Shakespeare."""
  root = tmp_path_factory.mktemp("sweep")
  corpus = root / "corpus.txt"
  with open(os.path.join(REPO, "data", "tinyshakespeare.txt"), encoding="utf-8") as f:
    corpus.write_text(f.read()[:20_000], encoding="utf-8")
  values = importlib.import_module("configs.scaling_sweep").get_config("smoke").to_dict()
  values["data"].update(path=str(corpus), val_fraction=0.1)
  values["sweep"]["models"] = values["sweep"]["models"][:1]
  values["sweep"]["tokens"] = values["sweep"]["tokens"][:1]
  sweep = sweep_exp.parse_config(values)
  workdir = str(root / "work")
  rows = sweep_exp.run(sweep, workdir)
  return {"sweep": sweep, "workdir": workdir, "rows": rows, "values": values}


def test_smoke_sweep_gathers_every_run(smoke_sweep):
  rows, workdir = smoke_sweep["rows"], smoke_sweep["workdir"]
  assert [r["name"] for r in rows] == ["tok2k_L1_D16"]
  assert [r["steps"] for r in rows] == [20]  # 2000 tokens / 128 per step, to whole scans of 10
  for row in rows:
    with open(os.path.join(workdir, "runs", row["name"], "summary.json")) as f:
      summary = json.load(f)
    assert row["val_loss"] == summary["val_loss"] and row["steps"] == summary["steps"]
    assert row["params"] == row["params_formula"]  # the formula matches the param tree
  with open(os.path.join(workdir, "results.jsonl")) as f:
    assert [json.loads(line)["name"] for line in f] == [r["name"] for r in rows]
  assert "tok2k_L1_D16" in open(os.path.join(workdir, "results.md")).read()
  with open(os.path.join(workdir, "curves.json")) as f:
    curves = json.load(f)
  assert [p["step"] for p in curves["tok2k_L1_D16"]["curve"]] == [10, 20]


def test_rerun_skips_finished_runs(smoke_sweep, capsys):
  workdir = smoke_sweep["workdir"]
  summaries = [os.path.join(workdir, "runs", r["name"], "summary.json")
               for r in smoke_sweep["rows"]]
  before = [os.stat(p).st_mtime_ns for p in summaries]
  rows = sweep_exp.run(smoke_sweep["sweep"], workdir)
  assert "1 already finished, 0 to train" in capsys.readouterr().out
  assert [os.stat(p).st_mtime_ns for p in summaries] == before
  assert rows == smoke_sweep["rows"]


def test_plan_saved_before_a_new_default_key_still_matches(smoke_sweep, capsys):
  """A run planned before the code gained a config key (at its default) is still finished."""
  row = smoke_sweep["rows"][0]
  path = os.path.join(smoke_sweep["workdir"], "runs", row["name"], sweep_lib.PLAN_FILE)
  with open(path) as f:
    saved = json.load(f)
  assert saved["optim"].pop("ema_decay") == 0.0  # the default
  with open(path, "w") as f:
    json.dump(saved, f)
  sweep_exp.run(smoke_sweep["sweep"], smoke_sweep["workdir"])
  assert "1 already finished, 0 to train" in capsys.readouterr().out


def test_changed_plan_is_refused(smoke_sweep):
  values = json.loads(json.dumps(smoke_sweep["values"]))
  values["sweep"]["models"][0]["optim.lr"] = 0.01
  with pytest.raises(UserError, match="another config"):
    sweep_exp.run(sweep_exp.parse_config(values), smoke_sweep["workdir"])


# --------------------------------------------------------------------------- the report


def _row(n, d, loss, budget=None, **extra):
  return {"name": f"N{n:.0f}_D{d:.0f}", "non_embedding_params": n, "tokens": d,
          "flops_6nd": 6.0 * n * d, "val_loss": loss, "budget": budget or d, **extra}


def test_pareto_front_by_hand():
  from experiments.scaling_report import pareto_front
  rows = [_row(1, 1, 3.0), _row(1, 2, 2.5), _row(2, 2, 2.7), _row(2, 4, 2.0), _row(4, 4, 2.2)]
  # C = 6, 12, 24, 48, 96: the 24-FLOP run (2.7) and the 96-FLOP run (2.2) are beaten by
  # cheaper runs.
  assert [r["val_loss"] for r in pareto_front(rows)] == [3.0, 2.5, 2.0]


def test_report_recovers_a_synthetic_sweep(tmp_path):
  """Grid and IsoFLOP rows drawn from a Chinchilla law: fits, plots and report.md."""
  from experiments import scaling_report
  from lm.scaling import frontier, laws, plots
  truth = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
  noise = np.random.default_rng(0)
  law = lambda n, d: float(laws.chinchilla_loss(n, d, **truth) * np.exp(noise.normal(0, 0.002)))
  grid = [_row(n, d, law(n, d)) for n in np.geomspace(1e7, 1e11, 6)
          for d in np.geomspace(1e8, 1e12, 6)]
  isoflop = []
  for budget in (1e18, 1e19, 1e20):
    n_opt, _ = frontier.parametric_frontier(truth, budget)
    isoflop += [_row(n, budget / (6 * n), law(n, budget / (6 * n)), budget)
                for n in n_opt * np.geomspace(1 / 8, 8, 7)]
  shape = [_row(2e5, 1e6, loss, aspect_ratio=a, num_layers=l, embed_dim=w)
           for loss, a, l, w in ((2.0, 64, 2, 128), (2.1, 8, 8, 64), (2.05, 16, 4, 64))]
  fits = scaling_report.build_fits(grid, isoflop, shape, {}, bootstrap=0)
  chin = fits["chinchilla"]["constants"]
  assert chin["alpha"] == pytest.approx(0.34, rel=0.05)
  assert chin["beta"] == pytest.approx(0.28, rel=0.05)
  assert fits["approach3"]["a"] == pytest.approx(0.28 / 0.62, rel=0.1)
  assert fits["isoflop"]["a"] == pytest.approx(0.28 / 0.62, rel=0.1)
  assert fits["shape"]["spread_pct"] == pytest.approx(5.0)  # (2.1 - 2.0) / 2.0
  names = plots.plot_all(fits, grid, isoflop, shape, str(tmp_path))
  assert all((tmp_path / name).stat().st_size > 1000 for name in names) and len(names) == 6
  report = scaling_report.report_markdown(fits, grid, isoflop, shape, names)
  for heading in ("Single power laws", "Kaplan's joint law", "Chinchilla's parametric law",
                  "Compute-optimal frontier", "Shape at fixed N", "isoflop.png"):
    assert heading in report

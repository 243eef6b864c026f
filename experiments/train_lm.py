"""Train a language model per the config, then print the summary and a sample."""

from lm.config import ExperimentConfig
from lm.train.trainer import train


def run(config: ExperimentConfig, workdir: str) -> dict:
  summary = train(config, workdir)
  print(f"val_loss {summary['val_loss']:.4f}  train_loss {summary['train_loss']:.4f}  "
        f"steps {summary['steps']}  params {summary['params']:,}  "
        f"tokens/s {summary['tokens_per_sec'] or float('nan'):,.0f}  "
        f"wall {summary['wall_time_s']:.1f}s")
  print(f"--- sample ---\n{summary['sample']}")
  print(f"summary written to {workdir}/summary.json")
  return summary

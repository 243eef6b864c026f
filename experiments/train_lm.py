"""Train a language model per the config, then print the summary and a sample."""

from lm.config import ExperimentConfig
from lm.train.trainer import train


def run(config: ExperimentConfig, workdir: str) -> dict:
  summary = train(config, workdir)
  print(f"val_loss {summary['val_loss']:.4f}  train_loss {summary['train_loss']:.4f}  "
        f"steps {summary['steps']}  params {summary['params']:,}  "
        f"tokens/s {summary['tokens_per_sec'] or float('nan'):,.0f}  "
        f"wall {summary['wall_time_s']:.1f}s")
  if "val_accuracy" in summary:  # classification and other accuracy-reporting tasks
    print(f"val_accuracy {summary['val_accuracy']:.4f}")
  if "trainable_fraction" in summary and summary["trainable_fraction"] < 1:
    print(f"trainable {summary['trainable_params']:,} params "
          f"({100 * summary['trainable_fraction']:.3f}%)")
  if "sample" in summary:
    print(f"--- sample ---\n{summary['sample']}")
  print(f"summary written to {workdir}/summary.json")
  return summary

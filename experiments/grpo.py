"""GRPO post-training of an SFT workdir (lm/post_training/grpo.py): `kind = "grpo"`.

  python -m experiments.run --config=configs/grpo_addition.py \
      --config.init_from=/tmp/sft_add --workdir=/tmp/grpo_add
"""

from lm.post_training.grpo import GRPOConfig, parse_config, train

__all__ = ["parse_config", "run"]


def run(config: GRPOConfig, workdir: str) -> dict:
  summary = train(config, workdir)
  print(f"held-out greedy accuracy {summary['heldout_accuracy_before']:.3f} -> "
        f"{summary['heldout_accuracy_after']:.3f} after {summary['steps']} GRPO steps  "
        f"wall {summary['wall_time_s']:.1f}s")
  print(f"summary written to {workdir}/summary.json")
  return summary

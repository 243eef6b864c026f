"""Post-training on the decoder family: SFT, distillation, GRPO, DPO (docs/post_training.md)."""

"""Adapting a pretrained model: which parameters train, loading the pretrained weights,
merging LoRA / baking prefixes for inference, and saving the trained part on its own.

The PEFT layers themselves are model options (lm/layers/peft.py); docs/adaptation.md
has the methods, their configs and the measured table.
"""

"""Experiment configs: each file has `get_config(arg=None)` returning a ConfigDict."""

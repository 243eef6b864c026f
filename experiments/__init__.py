"""Runnable experiments: `python -m experiments.run --config=configs/X.py --workdir=DIR`."""

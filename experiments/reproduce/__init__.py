"""Paper reproductions: one entry per claim of the lecture and the papers it cites.

`claims.py` lists each claim with its command, the paper's number and the results file
the command writes (`results/`); `python -m experiments.reproduce.report` regenerates
docs/reproductions.md from those files. `kv_cache.py`, `sparse_flops.py` and
`bert_masking.py` are the measurements no other experiment writes.
"""

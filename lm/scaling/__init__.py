"""Scaling laws: `counting` (N, FLOPs), `laws` (the forms), `fit` (Huber / L-BFGS, bootstrap),
`frontier` (compute-optimal N and D), `sweep` (a sweep's plan and results), `plots`."""

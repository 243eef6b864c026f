"""Evaluations of trained models: probes, memorisation, bias (one module per study)."""

"""Evaluation, baselines, metrics, reports and benchmarks (installed as fmrilm.eval)."""

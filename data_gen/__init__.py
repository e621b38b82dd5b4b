"""Synthetic cohort simulator and descriptor corpus builder (installed as fmrilm.data_gen)."""

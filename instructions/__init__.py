"""Declarative task specs and the instruction-set builder (installed as fmrilm.instructions)."""

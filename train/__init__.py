"""Training stages 1-3 and LoRA fine-tuning, on accelerate (installed as fmrilm.train)."""

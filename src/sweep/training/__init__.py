"""Training: LoRA layers, optimizers and schedules, events, and the loop itself."""

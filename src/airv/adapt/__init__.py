"""Test-time fine-tuning: LoRA adapters trained on each task's own train pairs."""

"""Fine-tuning a plan: ..."""

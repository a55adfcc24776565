"""qradaptor: per-layer bit-width and LoRA-rank allocation under a memory budget."""

"""Training of small Infinity-family models on the synthetic shapes world (torch side)."""

"""The training stage: where a run computes (runtime.py) and the training loop (loop.py)."""

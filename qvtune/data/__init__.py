"""The data stage: tasks and their metrics (tasks.py), token ids and batches (encode.py), and the
small vocabulary of the synthetic task and the tiny models (vocab.py)."""

"""The results store: one folder per run key (identity.py), holding the run's record (record.py);
the store itself, its locks and what it knows of each key (store.py). Nothing heavy is imported:
the sweeper and the collector read it far from the GPUs."""

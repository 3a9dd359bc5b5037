"""Searches over a sweep's learning-rate grid: its cells and groups (cells.py), successive halving
(halving.py) and Optuna's TPE (tpe.py)."""

"""Searches over a sweep's learning-rate grid, driven by a sweeper through grid.Sweeper (no Hydra
here): the cells, groups and scores (cells.py), the grid and its lookups (grid.py), successive
halving's arithmetic (halving.py) and its run rung by rung (halving_search.py), Optuna's study
(tpe.py) and its run batch by batch (optuna_search.py), their costs (costs.py) and the answer
(answer.py)."""

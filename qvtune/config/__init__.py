"""The run configuration, validated before anything heavy is imported or loaded, so that a typo
costs seconds, not a queued GPU job: the schema Hydra composes into (schema.py), the checks
(validate.py), the learning rates (rates.py) and a run's budget in steps and samples (budget.py).

Notation follows the paper: ``lr`` is eta_QK (W_q, W_k and their adapters), ``lam`` is
lambda = eta_V / eta_QK, and eta_V = lam * lr.
"""

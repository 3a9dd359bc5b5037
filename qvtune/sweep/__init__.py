"""Sweeps: what a launch runs and skips (plan.py), the sweeper's own options (options.py), runs
grouped into packs (packs.py), what became of a sweep's runs (outcomes.py), and the searches over
a learning-rate grid (search/). The Hydra plugin (hydra_plugins/qvtune_sweeper) composes the jobs,
launches them, and calls these. Nothing heavy is imported: a plan is made on a login node."""

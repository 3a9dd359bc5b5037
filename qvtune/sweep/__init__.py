"""Sweeps: what a launch runs and skips (plan.py), runs grouped into packs (packs.py), and the
searches over a learning-rate grid (search/). The Hydra plugin (hydra_plugins/qvtune_sweeper)
composes the jobs and calls these. Nothing heavy is imported: a plan is made on a login node."""

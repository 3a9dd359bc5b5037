"""Experiment trackers a run logs to while it trains."""

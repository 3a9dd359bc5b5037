"""The model stage: load a model (load.py), find its weight types (weights.py), attach a method and
form the optimizer's groups (methods.py), or pack K runs on one frozen base (pack.py)."""

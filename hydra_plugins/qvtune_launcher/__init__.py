"""qvtune's Hydra launcher plugin: `hydra/launcher=gpus` (conf/hydra/launcher/gpus.yaml)."""

"""`python -m qvtune.rekey RESULTS_DIR`: move a results store written by an earlier qvtune to today's
run keys, so that re-launched sweeps find its finished runs instead of running them again.

A run key is a hash of the settings that decide a result (qvtune.store.identity); when that set changes
(the precision became the one used, eval_every and eval_at_start joined it, task.train_size left
it), every folder of an older store is under a key nobody asks for. This recomputes each record's
key from its own config (fields it predates take the schema's defaults, which is what that version
did) and the precision it used, and renames its folder. A GPU run of an earlier version with
precision=auto did not record whether it computed in bf16 or fp16: it is left where it is, and a
re-launch runs it again. Nothing is overwritten: a folder whose new key is taken is reported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, cast

from omegaconf import OmegaConf

from qvtune.config.schema import RunConfig
from qvtune.store.identity import run_key
from qvtune.store.record import RESULT_FILE, RunRecord
from qvtune.store.store import result_files
from qvtune.train.runtime import resolve_precision


def precision_used(record: RunRecord, cfg: RunConfig) -> Optional[str]:
    """The precision the run computed in: recorded by this version, inferred for earlier ones where
    their device tells it, None where it cannot be known (precision=auto on a GPU)."""
    if record.precision:
        return record.precision
    device = (record.device or "cpu").split(":", 1)[0]
    if device == "cuda" and cfg.precision == "auto":
        return None
    return resolve_precision(cfg.precision, device, bf16_supported=False, weights=cfg.model.dtype)


def new_key(record: RunRecord) -> Optional[str]:
    """The record's key under today's identity, or None when its precision cannot be known."""
    cfg = cast(RunConfig, OmegaConf.merge(OmegaConf.structured(RunConfig), record.config))
    precision = precision_used(record, cfg)
    return None if precision is None else run_key(cfg, precision)


def rekey(root: Path, dry_run: bool = False) -> list[str]:
    """Rename every run folder directly below `root` whose key changed; one line per decision."""
    lines = []
    for rel in result_files(root):
        folder = (root / rel).parent
        if folder.parent != root:
            continue  # a folder nested in a sweep folder is not a run folder of this store
        try:
            record = RunRecord.read(root / rel)
            key = new_key(record)
        except (OSError, ValueError, KeyError) as e:  # OmegaConf: a key today's schema lacks
            lines.append(f"skipped {folder.name}: unusable record ({e})")
            continue
        if key is None:
            lines.append(
                f"left {folder.name}: a GPU run with precision=auto that did not record bf16 or fp16"
            )
        elif key == folder.name:
            continue
        elif (root / key).exists():
            lines.append(f"left {folder.name}: its new key {key} is already a folder of the store")
        else:
            lines.append(f"{'would move' if dry_run else 'moved'} {folder.name} -> {key}")
            if not dry_run:
                folder.rename(root / key)
                record = RunRecord.read(root / key / RESULT_FILE, curves=True)
                record.run_key = key
                record.write(root / key)
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qvtune.rekey", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the results store (results_dir) to bring up to date")
    parser.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(
            f"error: no results store at {args.results}: give the results_dir of your runs", file=sys.stderr
        )
        return 2
    lines = rekey(args.results, args.dry_run)
    print("\n".join(lines) if lines else "every run is under its current key")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m qvtune.rekey RESULTS_DIR [--dry-run]`: move a results store written by an earlier qvtune
to today's run keys, so that re-launched sweeps find its finished runs instead of running them again.

A run key is a hash of the settings that decide a result (qvtune.store.identity); when that rule
changes, every folder of an older store is under a key nobody asks for. This recomputes each record's
key from its own config (fields it predates take the schema's defaults, which is what that version
did) and the precision it used, and moves its folder there. A GPU run of an earlier version with
precision=auto did not record whether it computed in bf16 or fp16: it is left where it is, and a
re-launch runs it again. Nothing is overwritten: a folder whose new key is taken is reported and left.

It reads and checks every record before it moves anything, and skips (and reports) those it cannot
read, so a bad record never leaves a store half moved. A folder moves by one rename, and its record
(result.json and curves.json, which name its key) is rewritten afterwards: a run stopped in between
leaves a folder under its new key whose record names the old one, and running rekey again finishes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union, cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qvtune.config.schema import RunConfig
from qvtune.store.identity import run_key
from qvtune.store.record import RESULT_FILE, Curves, InvalidRecord, RunRecord
from qvtune.store.store import result_files
from qvtune.train.runtime import resolve_precision

# What reading a record and keying its config raise when the record cannot be used.
UNREADABLE = (OmegaConfBaseException, ValueError, KeyError, OSError)


@dataclass(frozen=True)
class Move:
    """A run folder to bring under its key: renamed where its name is not the key, record rewritten."""

    folder: Path
    key: str
    stale: str = ""  # for a folder already named `key`: why its record is rewritten


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
    if not record.config:
        raise InvalidRecord("no config to compute its key from")
    cfg = cast(RunConfig, OmegaConf.merge(OmegaConf.structured(RunConfig), record.config))
    precision = precision_used(record, cfg)
    return None if precision is None else run_key(cfg, precision)


def load(folder: Path) -> tuple[RunRecord, Optional[str]]:
    """The folder's record with its curves, and the run_key its curves file names (None without one).
    Not RunRecord.read, which refuses curves under another key than the record's: a rekey stopped
    between writing the two files leaves them so."""
    record = RunRecord.from_dict(json.loads((folder / RESULT_FILE).read_bytes()), curves=True)
    if not record.curves_file:
        return record, None
    data = json.loads((folder / record.curves_file).read_bytes())
    if not isinstance(data, dict) or not isinstance(data.get("run_key"), str):
        raise InvalidRecord(f"{record.curves_file}: not a JSON object with a run_key")
    record.curves = Curves.from_dict(data)
    return record, data["run_key"]


def reason(error: BaseException) -> str:
    """An error as one line: its type (unless it is InvalidRecord, whose message says it all) and the
    first line of its message (OmegaConf's run on with the key's path)."""
    message = (str(error).splitlines() or [""])[0]
    return message if isinstance(error, InvalidRecord) else f"{type(error).__name__}: {message}"


def plan(root: Path) -> list[Union[str, Move]]:
    """Phase one, which changes nothing: each run folder directly below `root`, in order, as the line
    that reports it (skipped, left) or the Move that brings it under its key; nothing where it is."""
    steps: list[Union[str, Move]] = []
    claimed: dict[str, str] = {}  # new key -> the folder moving there
    for rel in result_files(root):
        folder = (root / rel).parent
        if folder.parent != root:
            continue  # a folder nested in a sweep folder is not a run folder of this store
        try:
            record, curves_key = load(folder)
            key = new_key(record)
            if key is not None and curves_key not in (None, record.run_key, key):
                raise InvalidRecord(
                    f"{record.curves_file} holds the curves of run {curves_key}, not of {record.run_key}"
                )
        except UNREADABLE as e:
            steps.append(f"skipped {folder.name}: unreadable record ({reason(e)})")
            continue
        if key is None:
            steps.append(
                f"left {folder.name}: a GPU run with precision=auto that did not record bf16 or fp16"
            )
        elif key == folder.name:
            if record.run_key != key:  # moved, not rewritten: its curves.json names either key
                steps.append(Move(folder, key, f"its record said run_key {record.run_key}"))
        elif (root / key).exists():
            steps.append(f"left {folder.name}: its new key {key} is already a folder of the store")
        elif key in claimed:
            steps.append(f"left {folder.name}: its new key {key} is also that of {claimed[key]}")
        else:
            claimed[key] = folder.name
            steps.append(Move(folder, key))
    return steps


def apply(root: Path, move: Move, dry_run: bool) -> str:
    """Phase two for one folder: one rename, then the record rewritten under the key; its line."""
    target = root / move.key
    if move.folder != target:
        line = f"{'would move' if dry_run else 'moved'} {move.folder.name} -> {move.key}"
    else:
        line = f"{'would rewrite' if dry_run else 'rewrote'} {move.key}: {move.stale}"
    if not dry_run:
        if move.folder != target:
            move.folder.rename(target)
        record, _ = load(target)
        record.run_key = move.key
        record.write(target)  # curves.json, then the result.json that names them
    return line


def rekey(
    root: Path, dry_run: bool = False, report: Callable[[str], object] = lambda line: None
) -> list[str]:
    """Bring every run folder directly below `root` under its key: every record is read and checked
    before anything moves. One line per folder that is not there already, each passed to `report` as
    soon as it is done; raises OSError where a rename or a write fails (a re-run finishes the rest)."""
    lines = []
    for step in plan(root):
        line = step if isinstance(step, str) else apply(root, step, dry_run)
        report(line)
        lines.append(line)
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
    try:
        lines = rekey(args.results, args.dry_run, report=print)
    except OSError as e:
        print(f"error: {e}: the moves above are done; run rekey again to finish", file=sys.stderr)
        return 1
    if not lines:
        print("every run is under its current key")
    return 0


if __name__ == "__main__":
    sys.exit(main())

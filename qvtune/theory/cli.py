"""``python -m qvtune.theory <command> key=value ...``

Arguments are OmegaConf dotlist tokens (``widths=[64,128]`` works) merged over the command's typed
dataclass, so a typo or a wrong type is one clear line and exit code 2 instead of a traceback
after a minute of simulation.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

COMMANDS = (
    "bound",
    "toy",
    "stages",
)  # modules of qvtune.theory, imported on demand (only stages needs torch)


class UsageError(Exception):
    """A bad command line: reported as one line, exit code 2."""


def _module(command: str) -> ModuleType:
    return importlib.import_module(f"qvtune.theory.{command}")


def _keys(module: ModuleType) -> str:
    return ", ".join(f.name for f in dataclasses.fields(module.Config))


def usage() -> str:
    lines = ["usage: python -m qvtune.theory {bound,toy,stages} [key=value ...]", ""]
    for name in COMMANDS:
        module = _module(name)
        defaults = module.Config()
        lines.append(f"  {module.Config.__doc__}")
        lines += [f"      {f.name}={getattr(defaults, f.name)!r}" for f in dataclasses.fields(defaults)]
    return "\n".join(lines)


def parse(command: str, tokens: list[str]) -> Any:
    """The command's Config dataclass with the key=value tokens applied and checked."""
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; accepted: {', '.join(COMMANDS)}")
    module = _module(command)
    for token in tokens:
        if "=" not in token or token.startswith("="):
            raise UsageError(f"expected key=value, got {token!r}; keys for {command}: {_keys(module)}")
    try:
        overrides = OmegaConf.from_dotlist(tokens)
    except OmegaConfBaseException as e:
        raise UsageError(f"cannot parse {' '.join(tokens)!r}: {str(e).splitlines()[0]}") from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(module.Config), overrides)
        cfg = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        raise UsageError(f"unknown key {e.full_key!r} for {command}; accepted: {_keys(module)}") from None
    except ValidationError as e:
        field = {f.name: f for f in dataclasses.fields(module.Config)}.get(
            str(e.full_key).split(".")[0].split("[")[0]
        )
        expected = field.type if field else "another type"
        raise UsageError(
            f"bad value {e.full_key}={OmegaConf.select(overrides, str(e.full_key), default='?')!r}: "
            f"expected {expected}"
        ) from None
    except OmegaConfBaseException as e:  # e.g. an unresolvable ${...} interpolation
        raise UsageError(f"cannot use {' '.join(tokens)!r}: {str(e).splitlines()[0]}") from None
    try:
        module.check(cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    """Run one command; 0 on success, 2 on a usage error."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and (argv[0] == "help" or {"-h", "--help"} & set(argv)):
        print(usage())
        return 0
    try:
        if not argv:
            raise UsageError("no command given; accepted: " + ", ".join(COMMANDS) + " (see --help)")
        cfg = parse(argv[0], argv[1:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out or f"theory-out/{argv[0]}")
    start = time.perf_counter()
    print(_module(argv[0]).run(cfg, out))
    print(f"done in {time.perf_counter() - start:.1f}s; outputs in {out}/")
    return 0

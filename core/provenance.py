"""What a result needs beside it to be redone: resolved config, command, git revision, versions."""

from __future__ import annotations

import datetime as dt
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from core.config import AutotuneConfig

_PACKAGES = ("rl-autotune", "numpy", "numba", "gymnasium", "stable-baselines3", "torch", "pandas", "optuna")


def git_revision(repo: Path | None = None) -> str:
    """``<sha>`` of HEAD, with ``-dirty`` when the work tree has changes; ``unknown`` outside git."""
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_metadata(cfg: AutotuneConfig, argv: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    argv = list(sys.argv if argv is None else argv)
    return {
        "command": shlex.join(["autotune", *argv[1:]] if argv and argv[0].endswith("autotune") else argv),
        "git_revision": git_revision(),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "versions": _versions(),
        **extra,
        "config": cfg.model_dump(mode="json"),
    }


def write_run_metadata(path: Path, cfg: AutotuneConfig, argv: list[str] | None = None, **extra: Any) -> Path:
    """Write the metadata as YAML to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(run_metadata(cfg, argv, **extra), sort_keys=False), encoding="utf-8")
    return path

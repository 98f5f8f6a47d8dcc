"""The labeled requests shipped with the package (``data/requests.jsonl``), Chinese and English.

Each line: ``id``, ``lang`` (zh/en), ``text``, ``intent`` (a task type of the default registry, or
``none``), ``params`` (only what the text states, normalised as :mod:`intake_nl.extract` and the
schema define) and ``split`` (``train``: what the offline classifier learns from; ``test``: held back
for :func:`intake_nl.evaluate.evaluate`). Every example is read at :data:`REFERENCE_NOW`: the
relative dates in the labels ("tomorrow 9am") were resolved against it. See ``data/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from core.config import ConfigError, read_text_file

REFERENCE_NOW = datetime.fromisoformat("2026-11-23T10:00:00+08:00")  # a Monday, Asia/Shanghai
REFERENCE_TZ = "Asia/Shanghai"


@dataclass(frozen=True)
class Example:
    id: str
    lang: str
    text: str
    intent: str
    params: dict[str, Any]
    split: str


class DatasetError(ValueError):
    """A labeled-set file that cannot be read; the message names the file and line."""


def load_examples(path: str | Path | None = None, split: str | None = None) -> list[Example]:
    """The labeled requests (the shipped set, every ``data/*.jsonl``, if ``path`` is None), optionally
    one split."""
    if path is None:
        data = resources.files("intake_nl").joinpath("data")
        files = sorted((f for f in data.iterdir() if f.name.endswith(".jsonl")), key=lambda f: f.name)
        sources = [(f.read_text(encoding="utf-8"), f"intake_nl/data/{f.name}") for f in files]
    else:
        p = Path(path)
        if not p.is_file():
            raise DatasetError(f"{p}: labeled set not found")
        try:
            sources = [(read_text_file(p, "labeled set"), str(p))]
        except ConfigError as err:
            raise DatasetError(str(err)) from None
    out = []
    for text, where in sources:
        out.extend(_read(text, where, split))
    if not out:
        raise DatasetError(f"{path or 'intake_nl/data'}: no examples" + (f" in split {split!r}" if split else ""))
    return out


def _read(text: str, where: str, split: str | None) -> list[Example]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ex = Example(
                str(row["id"]),
                str(row["lang"]),
                str(row["text"]),
                str(row["intent"]),
                dict(row.get("params") or {}),
                str(row.get("split", "train")),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{where} line {n}: not a labeled example ({type(err).__name__}: {err})") from None
        if ex.split not in ("train", "test"):
            raise DatasetError(f"{where} line {n}: split must be train or test, got {ex.split!r}")
        if split is None or ex.split == split:
            out.append(ex)
    return out

"""The calibrated baselines (written by ``autotune calibrate``), read by the ``hpa`` and ``static`` policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.config import AutotuneConfig

CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration.yaml"


def load_calibration(cfg: AutotuneConfig, path: Path | None = None) -> dict[str, Any] | None:
    """The calibration, if one exists and was made for this cluster's bounds; None otherwise."""
    path = path or CALIBRATION_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if data.get("cluster") != cfg.cluster.model_dump():
        return None
    return data

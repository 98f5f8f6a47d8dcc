"""The calibrated rules: their settings as ``autotune calibrate`` wrote them, read and checked here,
and the one mapping from a rule's settings to its policy (used by the calibration's trials and by
:func:`models.registry.make_policy` alike, so what was measured is what runs).

``models/calibration.yaml`` holds one entry per rule (:data:`RULES`). An entry is the rule's settings
(the fields of :class:`control.hpa.HPAConfig` but the replica bounds, which come from the cluster;
of :class:`control.kpa.KPASettings`, :class:`control.keda.KEDASettings`,
:class:`control.predictive.PredictiveSettings`; ``level`` for ``static``) beside what the search
found (:data:`OUTCOME_KEYS`: attainment, cost, whether it met the SLIs, the search and its trials).
Settings left out keep the anchor's defaults, so an empty entry is the default rule. A calibration
is used only for the cluster bounds it was made for; a bad setting in it fails at load with
:class:`CalibrationFileError` naming the file, the rule and the field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from control.hpa import METRICS, HPAConfig
from control.keda import KEDASettings, keda_policy
from control.kpa import KPASettings, kpa_policy
from control.policies import Policy, default_hpa_config, hpa_policy, static_policy
from control.predictive import PredictiveSettings, predictive_policy
from core.config import CALIBRATED_RULE_NAMES, AutotuneConfig

CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration.yaml"

RULES = ("hpa", "kpa", "keda", "predictive", "static")
"""The rules calibrated alike; each also has a ``<rule>-default`` name in the registry."""
if RULES != CALIBRATED_RULE_NAMES:  # the config validates control.base_rule against its own list
    raise RuntimeError(
        f"models.calibration.RULES is {RULES}, core.config.CALIBRATED_RULE_NAMES {CALIBRATED_RULE_NAMES}"
    )

OUTCOME_KEYS = frozenset(
    {"min_attainment", "mean_attainment", "cost_slot_hours", "meets_slis", "per_scenario", "search", "trials"}
)
"""Keys of a rule's entry that report the search, not settings."""

CLUSTER_KEYS = ("min_concurrency", "max_concurrency", "warmup_s", "slots_per_replica")
"""The cluster's capacity model, which a calibration is made for (its outage settings are the live
cluster's business and do not change what a rule does)."""

HPA_SETTINGS = tuple(f.name for f in fields(HPAConfig) if f.name not in ("min_replicas", "max_replicas"))
_HPA = TypeAdapter(HPAConfig)


class StaticSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    level: int | None = Field(default=None, ge=1, description="slots held; None: the task type's concurrency")


class SettingsError(ValueError):
    """A rule's setting that cannot be used; ``rule`` and ``field`` name it."""

    def __init__(self, rule: str, field: str, problem: str) -> None:
        super().__init__(f"rule {rule!r}, field {field!r}: {problem}")
        self.rule, self.field, self.problem = rule, field, problem


class CalibrationFileError(ValueError):
    """A calibration file that cannot be used; the message names the file (and the rule and field)."""


def _settings_error(rule: str, err: ValidationError) -> SettingsError:
    first = err.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    field = ".".join(str(part) for part in first["loc"])
    if not field:  # HPAConfig's own checks: "HPAConfig.<field> must be ..."
        named = re.match(r"HPAConfig\.(\w+)", message)
        field = named.group(1) if named else "?"
    return SettingsError(rule, field, message)


def _hpa_config(settings: Mapping[str, Any], cfg: AutotuneConfig) -> HPAConfig:
    for key in settings:
        if key not in HPA_SETTINGS:
            raise SettingsError("hpa", str(key), f"not a setting of the HPA (known: {', '.join(HPA_SETTINGS)})")
    metric = settings.get("metric", "utilization")
    # the target's default follows the metric (70% utilisation, 50 tasks per replica)
    base = asdict(default_hpa_config(cfg, metric if metric in METRICS else "utilization"))
    return _HPA.validate_python({**base, **settings})


def rule_policy(rule: str, settings: Mapping[str, Any], cfg: AutotuneConfig, name: str | None = None) -> Policy:
    """The policy of ``rule`` with ``settings`` over its anchor's defaults ({} = the defaults).

    Raises :class:`SettingsError` naming the rule and the field of a bad or unknown setting."""
    name = name or rule
    settings = dict(settings)
    try:
        if rule == "hpa":
            return hpa_policy(cfg, _hpa_config(settings, cfg), name)
        if rule == "kpa":
            return kpa_policy(cfg, KPASettings.model_validate(settings), name)
        if rule == "keda":
            return keda_policy(cfg, KEDASettings.model_validate(settings), name)
        if rule == "predictive":
            return predictive_policy(cfg, PredictiveSettings.model_validate(settings), name)
        if rule == "static":
            level = StaticSettings.model_validate(settings).level
            return static_policy(cfg.task.concurrency if level is None else level, name)
    except ValidationError as err:
        raise _settings_error(rule, err) from None
    raise ValueError(f"unknown rule {rule!r}; the calibrated rules are {', '.join(RULES)}")


def rule_settings(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a rule's entry in the calibration file (its other keys report the search)."""
    return {k: v for k, v in entry.items() if k not in OUTCOME_KEYS}


def calibration_cluster(cfg: AutotuneConfig) -> dict[str, Any]:
    """What the calibration file records of the cluster, and must match to be used."""
    return {k: v for k, v in cfg.cluster.model_dump().items() if k in CLUSTER_KEYS}


def load_calibration(cfg: AutotuneConfig, path: Path | None = None) -> dict[str, Any] | None:
    """The calibration, if one exists and was made for this cluster's bounds; None otherwise.

    Every rule's settings are checked (by building its policy): a bad one raises
    :class:`CalibrationFileError` naming the file, the rule and the field."""
    path = path or CALIBRATION_FILE
    if not path.is_file():
        return None
    stat = path.stat()
    parsed = _parsed(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    # a copy of the top two levels: a caller may change an entry without changing the cache
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in parsed.items()} if isinstance(parsed, dict) else parsed
    if not isinstance(data, dict):
        raise CalibrationFileError(f"{path}: expected a mapping of rules, found {type(data).__name__}")
    recorded = data.get("cluster")
    if not isinstance(recorded, dict) or {k: recorded.get(k) for k in CLUSTER_KEYS} != calibration_cluster(cfg):
        return None
    for rule in RULES:
        entry = data.get(rule)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise CalibrationFileError(f"{path}: rule {rule!r}: expected a mapping of settings, found {entry!r}")
        try:
            rule_policy(rule, rule_settings(entry), cfg)
        except SettingsError as err:
            raise CalibrationFileError(f"{path}: {err}") from None
    return data


@functools.lru_cache(maxsize=8)
def _parsed(path: str, mtime_ns: int, size: int) -> Any:
    """The file's YAML, parsed once per version of the file (every environment asks for its fallback)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        why = " ".join(str(getattr(err, "problem", None) or err).split())
        raise CalibrationFileError(f"{path}: not valid YAML ({why})") from None


def calibrated_settings(cfg: AutotuneConfig, rule: str, path: Path | None = None) -> dict[str, Any] | None:
    """``rule``'s calibrated settings for this cluster's bounds, or None (then the defaults apply)."""
    calibration = load_calibration(cfg, path)
    if calibration is None or calibration.get(rule) is None:
        return None
    return rule_settings(calibration[rule])

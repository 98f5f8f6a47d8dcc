"""Configuration: defaults, the reference shape, and errors that name the field."""

from __future__ import annotations

import pytest

from core.config import ConfigError, config_from_dict, load_config, with_overrides
from core.retry import RetryPolicy


def test_defaults_are_the_reference_system():
    cfg = load_config(None)
    task = cfg.tasks["order_processing"]
    assert task.concurrency == 100 and task.timeout == 300
    assert task.retry_policy.max_retries == 3 and task.retry_policy.backoff == "exponential"
    assert set(task.steps) == {"payment", "inventory", "shipping"}
    assert (cfg.slis.success_rate_min, cfg.slis.mean_processing_time_s_max, cfg.slis.backlog_max) == (0.995, 5.0, 100)
    assert cfg.control.factors == (0.8, 1.0, 1.2) and cfg.control.interval_s == 15.0


def test_reference_yaml_shape_loads(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "tasks:\n"
        "  order_processing:\n"
        "    concurrency: 100\n"
        "    timeout: 300\n"
        "    retry_policy: {max_retries: 3, backoff: exponential}\n"
        "slis: {success_rate_min: 0.995, mean_processing_time_s_max: 5, backlog_max: 100}\n"
    )
    cfg = load_config(p)
    assert cfg.task.retry_policy == RetryPolicy(max_retries=3, backoff="exponential")


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (
            {"tasks": {"order_processing": {"concurrency": -5}}},
            "tasks.order_processing.concurrency",
            "greater than or equal to 1",
        ),
        (
            {"cluster": {"min_concurrency": 50, "max_concurrency": 10}},
            "cluster",
            "min_concurrency (50) must be <= max_concurrency (10)",
        ),
        ({"control": {"factors": [0.8, 0.0, 1.2]}}, "control.factors", "factor 1 is 0.0"),
        ({"control": {"factors": [0.8, -1, 1.2]}}, "control.factors", "must be > 0"),
        ({"simulation": {"scenario": "black-friday"}}, "simulation.scenario", "unknown scenario 'black-friday'"),
        ({"control": {"reward": "vibes"}}, "control.reward", "unknown reward 'vibes'"),
        (
            {"tasks": {"order_processing": {"retry_policy": {"max_retries": -1}}}},
            "tasks.order_processing.retry_policy",
            "RetryPolicy.max_retries must be >= 0",
        ),
        (
            {"tasks": {"order_processing": {"retry_policy": {"backoff": "linear"}}}},
            "tasks.order_processing.retry_policy.backoff",
            "exponential",
        ),
        ({"slis": {"success_rate_min": 1.5}}, "slis.success_rate_min", "less than or equal to 1"),
        (
            {"tasks": {"order_processing": {"priority_mix": [0.5, 0.5, 0.5]}}},
            "tasks.order_processing.priority_mix",
            "summing to 1",
        ),
        ({"simulation": {"bogus": 1}}, "simulation.bogus", "Extra inputs are not permitted"),
        ({"simulation": {"trace_gaps": "guess"}}, "simulation.trace_gaps", "'reject', 'fill-zero' or 'interpolate'"),
        ({"task_type": "gift_wrap"}, "(top level)", "task_type 'gift_wrap'"),
    ],
)
def test_invalid_config_names_the_field(data, field, words):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data, "my.yaml")
    msg = str(exc.value)
    assert msg.startswith(f"my.yaml: {field}"), msg
    assert words.lower() in msg.lower(), msg


def test_concurrency_outside_cluster_bounds():
    with pytest.raises(ConfigError, match=r"tasks.order_processing.concurrency \(500\) must lie within cluster bounds"):
        config_from_dict({"tasks": {"order_processing": {"concurrency": 500}}})


def test_yaml_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("tasks:\n  order_processing: {concurrency: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_overrides_are_validated():
    cfg = load_config(None)
    assert with_overrides(cfg, {"control.interval_s": 5}).control.interval_s == 5
    with pytest.raises(ConfigError, match="unknown field 'control.intervals'"):
        with_overrides(cfg, {"control.intervals": 5})
    with pytest.raises(ConfigError, match="control.interval_s"):
        with_overrides(cfg, {"control.interval_s": -1})

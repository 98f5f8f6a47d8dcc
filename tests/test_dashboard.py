from rich.console import Console

from autotune.dashboard import DashboardState, render, sparkline


def _text(state: DashboardState) -> str:
    console = Console(record=True, width=160)
    console.print(render(state))
    return console.export_text()


def test_dashboard_shows_levels_slis_and_decisions():
    s = DashboardState(
        "autotune run",
        "ppo",
        "active",
        elapsed_s=30,
        duration_s=300,
        arrival_rate_per_s=42.0,
        target=80,
        serving=75,
        running=40,
        backlog=12,
        success_rate=0.999,
        mean_processing_s=1.2,
        p90_processing_s=2.0,
        p99_processing_s=3.5,
    )
    s.decisions.append((15.0, 96.0, 80, "policy"))
    text = _text(s)
    for needle in ("ppo (active)", "42.0", "80 /   75", "99.90%", "1.20 s", "2.00 / 3.50 s", "policy"):
        assert needle in text, needle
    assert "BREACH" not in text and "FALLBACK" not in text


def test_dashboard_flags_breaches_and_fallback():
    s = DashboardState(
        "autotune run",
        "ppo",
        "active",
        backlog=250,
        success_rate=0.98,
        mean_processing_s=7.0,
        fallback="fallback:metrics:stale",
    )
    text = _text(s)
    assert text.count("BREACH") == 3 and "FALLBACK: fallback:metrics:stale" in text


def test_sparkline_scales_to_its_maximum():
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█"
    assert sparkline([]) == ""

"""envs.trace: strict loading of arrival traces, error messages that point at the bad line."""

from __future__ import annotations

import math
import pathlib
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import SimulationConfig
from envs.trace import (
    PACKAGED_TRACES,
    Trace,
    TraceError,
    load_trace,
    packaged_trace_path,
)

MINUTES = "timestamp,count\n1998-07-07T00:00:00,5\n1998-07-07T00:01:00,7\n1998-07-07T00:02:00,0\n"


def write(tmp_path, text: str, name: str = "trace.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def epoch_of(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def load_error(path) -> TraceError:
    with pytest.raises(TraceError) as info:
        load_trace(path)
    return info.value


# --------------------------------------------------------------------------- errors, with lines

# (id, CSV text, 1-based line of the error, words the message must contain)
ROW_ERRORS = [
    (
        "unparsable-iso",
        "timestamp,count\n1998-07-07T00:00:00,1\n1998-07-07T00:01:00,1\n1998-07-07T25:99:00,1\n",
        4,
        ["unparsable timestamp", "1998-07-07T25:99:00"],
    ),
    (
        "unparsable-epoch",
        "timestamp,count\n0,1\n60,1\n120,1\nsoon,1\n",
        5,
        ["unparsable timestamp", "soon"],
    ),
    (
        "iso-then-epoch",
        "timestamp,count\n1998-07-07T00:00:00,1\n899769660,1\n",
        3,
        ["epoch seconds", "ISO-8601", "one form"],
    ),
    (
        "epoch-then-iso",
        "timestamp,count\n899769600,1\n899769660,1\n1998-07-07T00:02:00,1\n",
        4,
        ["ISO-8601", "epoch seconds", "one form"],
    ),
    (
        "naive-then-aware",
        "timestamp,count\n1998-07-07T00:00:00,1\n1998-07-07T00:01:00,1\n1998-07-07T00:02:00+00:00,1\n",
        4,
        ["mix of time-zone-aware and naive"],
    ),
    (
        "aware-then-naive",
        "timestamp,count\n1998-07-07T00:00:00Z,1\n1998-07-07T00:01:00,1\n",
        3,
        ["mix of time-zone-aware and naive"],
    ),
    (
        "unparsable-among-offsets",
        "timestamp,count\n1998-07-07T00:00:00+01:00,1\n1998-07-07T01:01:00+02:00,1\nxx,1\n",
        4,
        ["unparsable timestamp", "'xx'"],
    ),
    (
        "blank-line-inside",
        "timestamp,count\n0,1\n\n120,1\n",
        3,
        ["empty timestamp"],
    ),
    (
        "duplicate",
        "timestamp,count\n0,1\n60,1\n60,2\n120,1\n",
        4,
        ["duplicate timestamp", "line 3", "strictly increasing"],
    ),
    (
        "backwards",
        "timestamp,count\n1998-07-07T00:00:00,1\n1998-07-07T00:02:00,1\n1998-07-07T00:01:00,1\n",
        4,
        ["goes backwards", "strictly increasing"],
    ),
    (
        "gap",
        "timestamp,count\n0,1\n60,1\n120,1\n240,1\n300,1\n",
        5,
        ["gap", "expected 60 s", "found 120 s", "1 bin missing"],
    ),
    (
        "gap-in-first-spacing",
        "timestamp,count\n0,1\n180,1\n240,1\n300,1\n",
        3,
        ["gap", "expected 60 s", "found 180 s", "2 bins missing"],
    ),
    (
        "uneven",
        "timestamp,count\n0,1\n1,1\n2,1\n2.5,1\n3.5,1\n",
        5,
        ["uneven spacing", "expected 1 s", "found 0.5 s"],
    ),
    (
        "iso-gap",
        "timestamp,count\n1998-07-07T00:00:00,1\n1998-07-07T00:01:00,1\n1998-07-07T00:02:00,1\n1998-07-07T00:05:00,1\n",
        5,
        ["gap", "expected 60 s", "found 180 s"],
    ),
    ("negative-count", "timestamp,count\n0,1\n60,2\n120,-3\n", 4, ["negative count -3"]),
    ("nan-count", "timestamp,count\n0,1\n60,NaN\n", 3, ["count is NaN"]),
    ("inf-count", "timestamp,count\n0,1\n60,1\n120,inf\n", 4, ["not finite"]),
    ("empty-count", "timestamp,count\n0,1\n60,\n120,1\n", 3, ["empty count"]),
    ("missing-count-field", "timestamp,count\n0,1\n60\n120,1\n", 3, ["empty count"]),
    ("text-count", "timestamp,count\n0,1\n60,1\n120,lots\n", 4, ["'lots' is not a number"]),
    ("too-many-fields", "timestamp,count\n0,1\n60,1,9\n", 3, ["expected 2 fields, found 3"]),
]


@pytest.mark.parametrize("text, line, words", [case[1:] for case in ROW_ERRORS], ids=[case[0] for case in ROW_ERRORS])
def test_row_error_names_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text, name="bad_trace.csv")
    err = load_error(path)
    message = str(err)
    assert "bad_trace.csv" in message
    assert err.line == line
    assert message.startswith(f"{path} line {line}: "), message
    for word in words:
        assert word in message, message


def test_error_message_format(tmp_path):
    path = write(tmp_path, "timestamp,count\n0,1\n60,1\n120,1\n180,1\n240,1\n300,-3\n")
    assert str(load_error(path)) == f"{path} line 7: negative count -3"

    path = write(tmp_path, "time,n\n0,1\n60,1\n")
    assert str(load_error(path)) == f"{path}: missing column 'timestamp' (found: time, n)"

    assert TraceError("trace.csv", "negative count -3", line=7).args == ("trace.csv line 7: negative count -3",)
    assert isinstance(TraceError("trace.csv", "x"), ValueError)


@pytest.mark.parametrize(
    "header, missing, found",
    [
        ("timestamp,n", "count", "timestamp, n"),
        ("time,count,extra", "timestamp", "time, count, extra"),
    ],
)
def test_missing_column_lists_found_columns(tmp_path, header, missing, found):
    path = write(tmp_path, f"{header}\n0,1,2\n60,1,2\n")
    err = load_error(path)
    assert err.line is None
    assert f"missing column '{missing}' (found: {found})" in str(err)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", ["file is empty"]),
        (b"\n\n", ["file is empty"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["not a CSV text file"]),
        (b"timestamp,count\n0,\xff\xfe\n", ["not a UTF-8 text file"]),
        (b'{"timestamp": [0, 60], "count": [1, 2]}\n', ["missing column 'timestamp'"]),
        (b"timestamp,count\n", ["at least 2 data rows, found 0"]),
        (b"timestamp,count\n0,1\n", ["at least 2 data rows, found 1"]),
    ],
    ids=["empty", "blank", "binary", "not-utf8", "json", "header-only", "one-row"],
)
def test_file_level_errors_name_the_path(tmp_path, content, words):
    path = tmp_path / "odd.csv"
    path.write_bytes(content)
    message = str(load_error(path))
    assert message.startswith(f"{path}")
    for word in words:
        assert word in message, message


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.csv"
    assert str(load_error(missing)) == f"{missing}: no such file"
    assert "is a directory" in str(load_error(tmp_path))


# --------------------------------------------------------------------------- accepted forms


def test_iso_minutes(tmp_path):
    trace = load_trace(write(tmp_path, MINUTES))
    assert trace.bin_s == 60.0
    assert trace.start_epoch_s == epoch_of("1998-07-07T00:00:00")
    assert trace.counts.dtype == np.float64
    np.testing.assert_array_equal(trace.counts, [5, 7, 0])
    np.testing.assert_allclose(trace.rates_per_s, [5 / 60, 7 / 60, 0])
    assert len(trace) == 3 and trace.duration_s == 180.0


@pytest.mark.parametrize(
    "stamps, bin_s",
    [(["899769600", "899769605", "899769610"], 5.0), (["10.5", "10.75", "11.0"], 0.25)],
)
def test_epoch_seconds(tmp_path, stamps, bin_s):
    text = "timestamp,count\n" + "".join(f"{s},{i}\n" for i, s in enumerate(stamps))
    trace = load_trace(write(tmp_path, text))
    assert trace.bin_s == bin_s
    assert trace.start_epoch_s == float(stamps[0])
    np.testing.assert_array_equal(trace.counts, [0, 1, 2])


def test_float_jitter_in_epoch_spacing_is_tolerated(tmp_path):
    stamps = [repr(i * 0.1) for i in range(50)]  # 0.30000000000000004, ...
    text = "timestamp,count\n" + "".join(f"{s},1\n" for s in stamps)
    trace = load_trace(write(tmp_path, text))
    assert trace.bin_s == pytest.approx(0.1, rel=1e-12)
    assert len(trace) == 50


@pytest.mark.parametrize(
    "rows",
    [
        ["1998-07-07T02:00:00+02:00", "1998-07-07T02:01:00+02:00", "1998-07-07T02:02:00+02:00"],
        ["1998-07-07T00:00:00Z", "1998-07-07T00:01:00Z", "1998-07-07T00:02:00Z"],
        # across a DST change: the offset moves, the UTC spacing stays one minute
        ["1998-07-07T01:59:00+01:00", "1998-07-07T03:00:00+02:00", "1998-07-07T03:01:00+02:00"],
    ],
    ids=["offset", "zulu", "offset-changes"],
)
def test_time_zone_aware_iso(tmp_path, rows):
    text = "timestamp,count\n" + "".join(f"{r},3\n" for r in rows)
    trace = load_trace(write(tmp_path, text))
    assert trace.bin_s == 60.0
    expected = datetime.fromisoformat(rows[0].replace("Z", "+00:00")).timestamp()
    assert trace.start_epoch_s == expected


def test_tolerated_variants(tmp_path):
    """Extra columns, quoting, CRLF line ends, a byte-order mark and trailing blank lines."""
    text = (
        '\ufeff"timestamp",count,comment\r\n'
        "1998-07-07T00:00:00,5,kick-off\r\n"
        '1998-07-07T00:01:00,7,"goal, 1-0"\r\n'
        "\r\n\r\n"
    )
    trace = load_trace(write(tmp_path, text))
    np.testing.assert_array_equal(trace.counts, [5, 7])
    assert trace.bin_s == 60.0


def test_path_is_kept_as_given(tmp_path):
    path = write(tmp_path, MINUTES)
    assert load_trace(path).path == str(path)
    assert load_trace(str(path)).path == str(path)


# --------------------------------------------------------------------------- shipped traces

SHIPPED = {"worldcup98_day": "1998-07-07T00:00:00", "worldcup98_holdout_day": "1998-06-30T00:00:00"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_traces_load(name):
    path = packaged_trace_path(name)
    assert path.is_file() and path.stat().st_size < 60_000
    trace = load_trace(path)
    assert len(trace) == 1440
    assert trace.bin_s == 60.0
    assert trace.start_epoch_s == epoch_of(SHIPPED[name])
    assert trace.counts.min() > 0 and trace.counts.max() / trace.counts.mean() > 4


def test_shipped_traces_are_different_days():
    day, holdout = (load_trace(packaged_trace_path(n)) for n in PACKAGED_TRACES)
    assert abs(day.start_epoch_s - holdout.start_epoch_s) > 86_400  # not adjacent either
    assert not np.array_equal(day.counts, holdout.counts)


def test_unknown_packaged_trace_lists_known_names():
    with pytest.raises(ValueError, match="worldcup98_day, worldcup98_holdout_day"):
        packaged_trace_path("worldcup98")


# --------------------------------------------------------------------------- Trace and window


def test_window():
    trace = Trace(path="t.csv", bin_s=60.0, counts=np.arange(10.0), start_epoch_s=1000.0)
    part = trace.window(3, 4)
    np.testing.assert_array_equal(part.counts, [3, 4, 5, 6])
    assert part.start_epoch_s == 1000.0 + 3 * 60.0
    assert part.bin_s == 60.0 and part.path == "t.csv"
    assert trace.window(0, 10) == trace
    np.testing.assert_array_equal(trace.window(9, 1).rates_per_s, [9 / 60])


@pytest.mark.parametrize("start_bin, n_bins", [(-1, 2), (0, 0), (8, 3), (10, 1)])
def test_window_out_of_range(start_bin, n_bins):
    trace = Trace(path="t.csv", bin_s=60.0, counts=np.arange(10.0), start_epoch_s=0.0)
    with pytest.raises(ValueError, match="does not fit in 10 bins"):
        trace.window(start_bin, n_bins)


@pytest.mark.parametrize("start_bin, n_bins", [(1.0, 2), (0, True), ("1", 2)])
def test_window_wants_ints(start_bin, n_bins):
    trace = Trace(path="t.csv", bin_s=60.0, counts=np.arange(10.0), start_epoch_s=0.0)
    with pytest.raises(TypeError):
        trace.window(start_bin, n_bins)


def test_trace_is_immutable_and_validated():
    source = np.array([1.0, 2.0])
    trace = Trace(path="t.csv", bin_s=1.0, counts=source, start_epoch_s=0.0)
    source[0] = 99.0  # the trace holds its own copy
    assert trace.counts[0] == 1.0
    with pytest.raises(ValueError):
        trace.counts[0] = 5.0
    with pytest.raises(ValueError):
        trace.window(0, 1).counts[0] = 5.0
    with pytest.raises(AttributeError):
        trace.bin_s = 2.0  # type: ignore[misc]
    for bad in (
        dict(bin_s=0.0),
        dict(bin_s=math.nan),
        dict(counts=np.array([1.0, -1.0])),
        dict(counts=np.array([1.0, math.inf])),
        dict(counts=np.array([])),
    ):
        kwargs = dict(path="t.csv", bin_s=1.0, counts=np.ones(2), start_epoch_s=0.0) | bad
        with pytest.raises(ValueError):
            Trace(**kwargs)


# --------------------------------------------------------------------------- property


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("roundtrip") / "trace.csv"


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(
        st.floats(min_value=0.0, allow_nan=False, allow_infinity=False) | st.integers(min_value=0, max_value=2**53),
        min_size=2,
        max_size=60,
    ),
    start=st.integers(min_value=0, max_value=4_000_000_000),
    # exactly representable steps, so that every timestamp is written exactly
    bin_s=st.sampled_from([0.25, 0.5, 1, 5, 60, 300, 3600, 86400]),
)
def test_counts_round_trip_exactly(scratch, counts, start, bin_s):
    rows = "".join(f"{start + i * bin_s!r},{c!r}\n" for i, c in enumerate(counts))
    scratch.write_text("timestamp,count\n" + rows)
    trace = load_trace(scratch)
    np.testing.assert_array_equal(trace.counts, np.array(counts, dtype=np.float64))
    assert trace.bin_s == bin_s
    assert trace.start_epoch_s == start


# --------------------------------------------------------------------------- gaps: reject or fill
# three bins missing between 00:01 and 00:05 (lines 3 and 4 of the file)
GAPPED = (
    "timestamp,count\n1998-07-07T00:00:00,10\n1998-07-07T00:01:00,2\n1998-07-07T00:05:00,10\n1998-07-07T00:06:00,4\n"
)
SHARED_WORLDCUP = pathlib.Path("/work/shared/traces/worldcup98_minutely.csv")


def test_gaps_are_rejected_by_default_naming_file_and_line(tmp_path):
    path = write(tmp_path, GAPPED, name="gapped.csv")
    for err in (load_error(path), _error(lambda: load_trace(path, gaps="reject"))):
        assert err.line == 4
        assert str(err).startswith(f"{path} line 4: gap: expected 60 s between rows, found 240 s after line 3")
        assert "3 bins missing" in str(err)


def _error(load) -> TraceError:
    with pytest.raises(TraceError) as info:
        load()
    return info.value


def test_fill_zero_fills_the_missing_bins_with_zeros(tmp_path):
    trace = load_trace(write(tmp_path, GAPPED), gaps="fill-zero")
    np.testing.assert_array_equal(trace.counts, [10, 2, 0, 0, 0, 10, 4])
    np.testing.assert_array_equal(trace.filled, [False, False, True, True, True, False, False])
    assert trace.filled_bins == 3
    assert trace.bin_s == 60.0 and trace.start_epoch_s == epoch_of("1998-07-07T00:00:00")


def test_interpolate_fills_the_line_between_the_neighbours(tmp_path):
    trace = load_trace(write(tmp_path, GAPPED), gaps="interpolate")
    np.testing.assert_allclose(trace.counts, [10, 2, 4, 6, 8, 10, 4])
    assert trace.filled_bins == 3
    assert trace.window(1, 3).filled_bins == 2  # the mask travels with a window


def test_a_trace_without_gaps_loads_the_same_whatever_the_option(tmp_path):
    path = write(tmp_path, MINUTES)
    plain = load_trace(path)
    assert plain.filled_bins == 0
    for gaps in ("fill-zero", "interpolate"):
        assert load_trace(path, gaps=gaps) == plain


@pytest.mark.parametrize("gaps", ["fill-zero", "interpolate"])
@pytest.mark.parametrize(
    "text, line, words",
    [
        ("timestamp,count\n0,1\n60,1\n60,1\n120,1\n", 4, "duplicate timestamp '60'"),
        ("timestamp,count\n0,1\n120,1\n60,1\n180,1\n", 4, "timestamp goes backwards"),
        ("timestamp,count\n0,1\n60,1\n120,1\n210,1\n270,1\n", 5, "not a whole number of bins"),
        ("timestamp,count\n0,1\n60,1\n90,1\n150,1\n210,1\n", 4, "uneven spacing"),
    ],
)
def test_filling_gaps_still_refuses_a_broken_file(tmp_path, gaps, text, line, words):
    path = write(tmp_path, text)
    err = _error(lambda: load_trace(path, gaps=gaps))
    assert err.line == line and words in str(err), str(err)


def test_unknown_gap_option_is_refused(tmp_path):
    with pytest.raises(ValueError, match="gaps must be one of reject, fill-zero, interpolate"):
        load_trace(write(tmp_path, MINUTES), gaps="guess")  # type: ignore[arg-type]


def test_filled_mask_is_validated_and_read_only():
    with pytest.raises(ValueError, match="filled must have the shape"):
        Trace(path="x", bin_s=1.0, counts=np.ones(3), start_epoch_s=0.0, filled=np.zeros(2, dtype=bool))
    trace = Trace(path="x", bin_s=1.0, counts=np.ones(3), start_epoch_s=0.0)
    assert trace.filled is not None and not trace.filled.flags.writeable


def test_gap_options_agree_with_the_config_and_the_command_line():
    from autotune.cli import TRACE_GAP_CHOICES
    from envs.trace import GAP_POLICIES

    assert TRACE_GAP_CHOICES == GAP_POLICIES
    assert SimulationConfig().trace_gaps == "reject"


def test_trace_scenario_uses_the_configured_gap_option(tmp_path):
    from envs.scaling_env import ConcurrencyScalingEnv

    path = write(tmp_path, GAPPED)
    with pytest.raises(TraceError, match="gap"):
        ConcurrencyScalingEnv(scenario=f"trace:{path}")
    env = ConcurrencyScalingEnv(scenario=f"trace:{path}", overrides={"simulation.trace_gaps": "interpolate"})
    env.reset(seed=0)
    assert np.isfinite(env.arrival_rates_per_s).all() and env.arrival_rates_per_s.max() > 0


def test_check_trace_reports_filled_bins(tmp_path, capsys):
    from autotune.cli import main

    path = write(tmp_path, GAPPED)
    assert main(["check-trace", str(path)]) == 2
    assert "3 bins missing" in capsys.readouterr().err
    assert main(["check-trace", str(path), "--gaps", "interpolate"]) == 0
    assert "7 bins of 60 s" in (out := capsys.readouterr().out) and "3 bins filled (interpolate)" in out
    assert main(["check-trace", str(path), "--gaps", "guess"]) == 2
    assert "--gaps 'guess': choose one of reject, fill-zero, interpolate" in capsys.readouterr().err


def test_shared_worldcup_trace_loads_with_interpolation():
    """The whole World Cup 1998 span, minutely, with its few gaps (shared, outside the repo)."""
    assert SHARED_WORLDCUP.is_file(), f"the shared World Cup trace is expected at {SHARED_WORLDCUP}"
    with pytest.raises(TraceError, match="gap"):
        load_trace(SHARED_WORLDCUP)
    trace = load_trace(SHARED_WORLDCUP, gaps="interpolate")
    assert trace.bin_s == 60.0
    assert trace.duration_s >= 86 * 86_400
    assert 0 < trace.filled_bins <= 20  # "a few gaps"
    assert trace.start_epoch_s == epoch_of("1998-04-30T21:30:00")
    assert np.isfinite(trace.counts).all() and trace.counts.min() >= 0

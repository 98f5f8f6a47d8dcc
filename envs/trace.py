"""Arrival-rate traces: strict loading of ``timestamp,count`` CSV files.

The simulator replays a trace as its arrival rate, so a silently wrong trace (a gap, a duplicated
minute, a negative count) would quietly distort every experiment run on it. :func:`load_trace`
therefore refuses anything doubtful with a :class:`TraceError` that names the file and the 1-based
CSV line (header = line 1).

File format: a header with at least the columns ``timestamp`` and ``count`` (others are ignored),
then one row per bin, oldest first, evenly spaced. Timestamps are either all ISO-8601 (naive ones
are read as UTC) or all epoch seconds (int or float). Counts are finite numbers >= 0. At most
``MAX_TRACE_ROWS`` rows and ``MAX_TRACE_BYTES`` bytes (:mod:`core.config`, where all limits are).

Gaps (missing bins, where a spacing is a whole number of bins wider than the rest) are refused by
default. ``gaps="fill-zero"`` fills each missing bin with a count of 0 (the bin had no arrivals),
``gaps="interpolate"`` with the straight line between the counts either side. Filled bins are
counted (:attr:`Trace.filled_bins`) and marked (:attr:`Trace.filled`), so a report can say how much
of a trace was made up. Duplicated, backward and unevenly spaced timestamps are refused whatever
``gaps`` says: they are not missing data but a broken file.

The checks are vectorised: 125k rows (the whole WorldCup98 span, minutely) load in about 0.15 s.
Only once a check has failed is anything looked at row by row, to word the message.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pathlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import get_args

import numpy as np
import pandas as pd

from core.config import MAX_TRACE_BYTES, MAX_TRACE_ROWS, TraceGaps

TIMESTAMP_COLUMN = "timestamp"
COUNT_COLUMN = "count"
MIN_ROWS = 2  # one spacing is needed to know the bin width

# Relative tolerance on the bin spacing: absorbs float noise in epoch seconds such as
# 0.1, 0.2, 0.30000000000000004, and nothing a real gap could hide in.
SPACING_RTOL = 1e-6

GAP_POLICIES: tuple[str, ...] = get_args(TraceGaps)

PACKAGED_TRACES: tuple[str, ...] = ("worldcup98_day", "worldcup98_holdout_day")

_FIRST_DATA_LINE = 2
_CHUNK_BYTES = 1 << 20
# An explicit zone after a time of day: Z, +hh, +hhmm or +hh:mm. Anchored on the time so that the
# "-07" ending a bare date such as 1998-07-07 is not taken for an offset.
_ZONE_SUFFIX = re.compile(r"[T ]\d[\d:.,]*(?:Z|[+-]\d\d(?::?\d\d)?)$")
_PARSER_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


class TraceError(ValueError):
    """One error line naming the file and, when relevant, the 1-based CSV line (header = line 1).

    ``str(err)`` reads ``"trace.csv line 7: negative count -3"`` or
    ``"trace.csv: missing column 'count' (found: time, n)"``.
    """

    def __init__(self, path: str | os.PathLike[str], message: str, line: int | None = None):
        self.path = os.fspath(path)
        self.message = message
        self.line = line
        where = self.path if line is None else f"{self.path} line {line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, eq=False)
class Trace:
    """A validated arrival trace: ``counts[i]`` arrivals in the bin starting at
    ``start_epoch_s + i * bin_s``. ``counts`` is a read-only float64 array. ``filled`` (read-only
    bool, same length; all False if not given) marks the bins a gap was filled in, not read."""

    path: str
    bin_s: float
    counts: np.ndarray
    start_epoch_s: float
    filled: np.ndarray | None = None

    def __post_init__(self) -> None:
        bin_s = float(self.bin_s)
        if not (math.isfinite(bin_s) and bin_s > 0):
            raise ValueError(f"bin_s must be a finite number > 0, got {self.bin_s!r}")
        start = float(self.start_epoch_s)
        if not math.isfinite(start):
            raise ValueError(f"start_epoch_s must be finite, got {self.start_epoch_s!r}")
        counts = np.array(self.counts, dtype=np.float64)  # a private copy, so read-only is real
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
        if not (np.isfinite(counts).all() and (counts >= 0).all()):
            raise ValueError("counts must be finite and >= 0")
        counts.flags.writeable = False
        filled = np.zeros(counts.shape, dtype=bool) if self.filled is None else np.array(self.filled, dtype=bool)
        if filled.shape != counts.shape:
            raise ValueError(f"filled must have the shape of counts {counts.shape}, got {filled.shape}")
        filled.flags.writeable = False
        object.__setattr__(self, "filled", filled)
        object.__setattr__(self, "path", os.fspath(self.path))
        object.__setattr__(self, "bin_s", bin_s)
        object.__setattr__(self, "start_epoch_s", start)
        object.__setattr__(self, "counts", counts)

    def __len__(self) -> int:
        return int(self.counts.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (
            self.path == other.path
            and self.bin_s == other.bin_s
            and self.start_epoch_s == other.start_epoch_s
            and np.array_equal(self.counts, other.counts)
            and np.array_equal(np.asarray(self.filled), np.asarray(other.filled))
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array: equal traces need not hash alike

    @property
    def filled_bins(self) -> int:
        """How many bins were missing from the file and filled in (``gaps`` of :func:`load_trace`)."""
        assert self.filled is not None  # set in __post_init__
        return int(np.count_nonzero(self.filled))

    @property
    def duration_s(self) -> float:
        return len(self) * self.bin_s

    @property
    def rates_per_s(self) -> np.ndarray:
        """Mean arrival rate in each bin, in arrivals per second."""
        return self.counts / self.bin_s

    def window(self, start_bin: int, n_bins: int) -> Trace:
        """The ``n_bins`` bins starting at bin ``start_bin`` (0-based), as a trace of its own."""
        for name, value in (("start_bin", start_bin), ("n_bins", n_bins)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if start_bin < 0 or n_bins < 1 or start_bin + n_bins > len(self):
            raise ValueError(
                f"window(start_bin={start_bin}, n_bins={n_bins}) does not fit in {len(self)} bins of {self.path}"
            )
        assert self.filled is not None  # set in __post_init__
        return Trace(
            path=self.path,
            bin_s=self.bin_s,
            counts=self.counts[start_bin : start_bin + n_bins],
            start_epoch_s=self.start_epoch_s + start_bin * self.bin_s,
            filled=self.filled[start_bin : start_bin + n_bins],
        )


def packaged_trace_path(name: str) -> pathlib.Path:
    """Path of a trace shipped in ``envs/data/`` (see ``envs/data/README.md``)."""
    if name not in PACKAGED_TRACES:
        raise ValueError(f"unknown packaged trace {name!r}; known: {', '.join(PACKAGED_TRACES)}")
    resource = resources.files("envs") / "data" / f"{name}.csv"
    if not isinstance(resource, pathlib.Path):
        # Only a zipped install gets here; load_trace needs a real file.
        raise RuntimeError(f"packaged trace {name!r} is not on the file system: {resource}")
    return resource


def load_trace(path: str | os.PathLike[str], gaps: TraceGaps = "reject") -> Trace:
    """Read and validate a ``timestamp,count`` CSV; raise :class:`TraceError` on the first problem.

    ``gaps``: ``"reject"`` (a missing bin is an error), ``"fill-zero"`` or ``"interpolate"`` (see the
    module docstring)."""
    if gaps not in GAP_POLICIES:
        raise ValueError(f"gaps must be one of {', '.join(GAP_POLICIES)}, got {gaps!r}")
    text = _read_text(path)
    frame = _parse_csv(path, text)
    raw_ts = frame[TIMESTAMP_COLUMN].to_numpy(dtype=object)
    raw_counts = frame[COUNT_COLUMN].to_numpy(dtype=object)
    if raw_ts.size < MIN_ROWS:
        raise TraceError(path, f"needs at least {MIN_ROWS} data rows, found {raw_ts.size}")
    if raw_ts.size > MAX_TRACE_ROWS:  # the read caught all but a last row without a newline
        raise TraceError(path, _too_many_rows())

    start_epoch_s, spacings_s, resolution_s = _parse_timestamps(path, raw_ts)
    counts = _parse_counts(path, raw_counts)
    bin_s, bins_after = _check_spacing(path, raw_ts, spacings_s, resolution_s, gaps)
    filled = None
    if bins_after is not None:
        counts, filled = _fill_gaps(path, counts, bins_after, gaps)
    return Trace(path=os.fspath(path), bin_s=bin_s, counts=counts, start_epoch_s=start_epoch_s, filled=filled)


def _read_text(path: str | os.PathLike[str]) -> str:
    """The file's text, read in chunks so that an oversized or binary file is refused early (a
    trace bigger than MAX_TRACE_BYTES or longer than MAX_TRACE_ROWS would exhaust memory in the
    parse; /dev/zero would never end)."""
    p = pathlib.Path(path)
    chunks: list[bytes] = []
    size = lines = 0
    try:
        with p.open("rb") as fh:
            while chunk := fh.read(_CHUNK_BYTES):
                if b"\x00" in chunk:
                    raise TraceError(path, "not a CSV text file (contains NUL bytes)")
                size += len(chunk)
                lines += chunk.count(b"\n")
                if lines > MAX_TRACE_ROWS + 1:  # + the header
                    raise TraceError(path, _too_many_rows())
                if size > MAX_TRACE_BYTES:
                    raise TraceError(path, f"larger than {MAX_TRACE_BYTES:,} bytes, the limit for a trace file")
                chunks.append(chunk)
    except FileNotFoundError:
        raise TraceError(path, "no such file") from None
    except IsADirectoryError:
        raise TraceError(path, "is a directory, not a CSV file") from None
    except OSError as exc:
        raise TraceError(path, f"cannot read file: {exc.strerror or exc}") from None
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceError(path, f"not a UTF-8 text file (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise TraceError(path, "file is empty")
    return text


def _too_many_rows() -> str:
    return (
        f"more than {MAX_TRACE_ROWS:,} rows, the limit for a trace (a longer one would exhaust memory: "
        "resample it to wider bins)"
    )


def _parse_csv(path: str | os.PathLike[str], text: str) -> pd.DataFrame:
    header = next(csv.reader(io.StringIO(text)), [])
    found = [name.strip() for name in header]
    for column in (TIMESTAMP_COLUMN, COUNT_COLUMN):
        if column not in found:
            shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "")
            raise TraceError(path, f"missing column {column!r} (found: {shown})")
    try:
        # Everything as raw strings: numbers are converted below with Python's exact float
        # parsing, and a bad cell can be quoted as written. Blank lines are kept as rows so that
        # row i is always line i + 2.
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=object,
            na_filter=False,
            skip_blank_lines=False,
            skipinitialspace=True,
        )
    except pd.errors.ParserError as exc:
        match = _PARSER_LINE.search(str(exc))
        if match:
            expected, line, saw = (int(g) for g in match.groups())
            raise TraceError(path, f"expected {expected} fields, found {saw}", line=line) from None
        raise TraceError(path, f"not a valid CSV file: {exc}") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    frame = frame[[TIMESTAMP_COLUMN, COUNT_COLUMN]]
    # Trailing blank lines are harmless; blank lines between rows are reported as empty cells.
    filled = ((frame[TIMESTAMP_COLUMN] != "") | (frame[COUNT_COLUMN] != "")).to_numpy()
    n_rows = int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0
    return frame.iloc[:n_rows]


def _line(row: int) -> int:
    return row + _FIRST_DATA_LINE


def _parse_timestamps(path: str | os.PathLike[str], raw: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Epoch seconds of the first row, the spacings between consecutive rows (s), and the
    resolution of those spacings (s): the float rounding of epoch seconds, 0 for ISO-8601.

    The first row decides the form (epoch seconds or ISO-8601); every other row must match it.
    """
    if _is_number(raw[0]):
        try:
            seconds = np.array(raw, dtype=np.float64)
        except ValueError:
            seconds = np.array([_to_float(v) for v in raw])  # error path only: find the bad row
        bad = ~np.isfinite(seconds)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise TraceError(path, _timestamp_problem(raw[row], "epoch seconds"), line=_line(row))
        # Differences of large epoch values carry the rounding of the values themselves.
        resolution_s = 4 * float(np.spacing(np.abs(seconds).max()))
        return float(seconds[0]), np.diff(seconds), resolution_s

    strings = pd.Series(raw, dtype=object)
    zone_mix = np.zeros(raw.size, dtype=bool)
    first_has_zone = False
    try:
        parsed = pd.to_datetime(strings, format="ISO8601", errors="coerce")
    except ValueError:  # "Mixed timezones": several offsets (e.g. across DST), or zone and none
        parsed = pd.to_datetime(strings, format="ISO8601", errors="coerce", utc=True)
        has_zone = strings.str.contains(_ZONE_SUFFIX).to_numpy(dtype=bool)
        first_has_zone = bool(has_zone[0])
        zone_mix = has_zone != first_has_zone
    bad = parsed.isna().to_numpy()
    if bad.any() or zone_mix.any():
        row = int(np.flatnonzero(bad | zone_mix)[0])
        if bad[row]:
            raise TraceError(path, _timestamp_problem(raw[row], "ISO-8601"), line=_line(row))
        first = "has a time zone" if first_has_zone else "has none"
        raise TraceError(
            path,
            f"mix of time-zone-aware and naive ISO-8601 timestamps: {raw[row]!r} (line {_FIRST_DATA_LINE} {first})",
            line=_line(row),
        )
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    micros = parsed.to_numpy().astype("datetime64[us]").view(np.int64)
    return micros[0] / 1e6, np.diff(micros) / 1e6, 0.0


def _timestamp_problem(value: str, expected_form: str) -> str:
    if value == "":
        return "empty timestamp"
    if expected_form == "ISO-8601" and _is_number(value):
        return (
            f"timestamp {value!r} is epoch seconds but line {_FIRST_DATA_LINE} is ISO-8601 (a file must use one form)"
        )
    if expected_form == "epoch seconds" and not _is_number(value):
        if _is_iso(value):
            return (
                f"timestamp {value!r} is ISO-8601 but line {_FIRST_DATA_LINE} is epoch seconds "
                "(a file must use one form)"
            )
        return f"unparsable timestamp {value!r} (expected epoch seconds)"
    if expected_form == "epoch seconds":
        return f"timestamp {value!r} is not finite"
    return f"unparsable timestamp {value!r} (expected ISO-8601)"


def _parse_counts(path: str | os.PathLike[str], raw: np.ndarray) -> np.ndarray:
    try:
        counts = np.array(raw, dtype=np.float64)
    except ValueError:
        counts = np.array([_to_float(v) for v in raw])  # error path only: text becomes NaN
    bad = ~np.isfinite(counts) | (counts < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value, number = raw[row], counts[row]
        if value == "":
            message = "empty count"
        elif not _is_number(value):
            message = f"count {value!r} is not a number"
        elif math.isnan(number):
            message = "count is NaN"
        elif math.isinf(number):
            message = f"count {value!r} is not finite"
        else:
            message = f"negative count {value}"
        raise TraceError(path, message, line=_line(row))
    return counts + 0.0  # turns -0.0 into 0.0


def _check_spacing(
    path: str | os.PathLike[str], raw_ts: np.ndarray, spacings_s: np.ndarray, resolution_s: float, gaps: TraceGaps
) -> tuple[float, np.ndarray | None]:
    """Strictly increasing, evenly spaced timestamps; returns the bin width in seconds and, when
    gaps are to be filled and there are some, the number of bins each spacing spans (else None)."""
    not_after = spacings_s <= 0
    if not_after.any():
        k = int(np.flatnonzero(not_after)[0])  # row k + 1 is not after row k
        current, previous = raw_ts[k + 1], raw_ts[k]
        what = "duplicate timestamp" if spacings_s[k] == 0 else "timestamp goes backwards:"
        raise TraceError(
            path,
            f"{what} {current!r} (previous row, line {_line(k)}: {previous!r}); timestamps must be strictly increasing",
            line=_line(k + 1),
        )
    # The bin width is the typical spacing (lower median, always an observed value), so that a
    # single gap is reported where it is, even when it is the first spacing in the file.
    middle = (spacings_s.size - 1) // 2
    bin_s = float(np.partition(spacings_s, middle)[middle])
    tolerance = SPACING_RTOL * bin_s + resolution_s
    off = np.abs(spacings_s - bin_s) > tolerance
    if off.any() and gaps != "reject":
        bins_after = np.rint(spacings_s / bin_s)
        # a gap is a whole number of bins; the tolerance grows with it (each bin's float rounding)
        whole = (bins_after >= 1) & (np.abs(spacings_s - bins_after * bin_s) <= bins_after * tolerance)
        if whole.all():
            return bin_s, bins_after.astype(np.int64)
        off = ~whole  # report the first spacing that is no whole number of bins, below
    if off.any():
        k = int(np.flatnonzero(off)[0])
        found = float(spacings_s[k])
        kind = "gap" if found > bin_s else "uneven spacing"
        missing = found / bin_s - 1
        detail = ""
        if kind == "gap" and float(missing).is_integer():
            detail = f" ({missing:g} bin{'s' if missing != 1 else ''} missing)"
        elif gaps != "reject":
            detail = " (not a whole number of bins: only whole missing bins can be filled)"
        raise TraceError(
            path,
            f"{kind}: expected {bin_s:g} s between rows, found {found:g} s after line "
            f"{_line(k)} ({raw_ts[k]!r} -> {raw_ts[k + 1]!r}){detail}",
            line=_line(k + 1),
        )
    return bin_s, None


def _fill_gaps(
    path: str | os.PathLike[str], counts: np.ndarray, bins_after: np.ndarray, gaps: TraceGaps
) -> tuple[np.ndarray, np.ndarray]:
    """Counts with the missing bins filled (zeros, or the line between the neighbours) and the mask
    of filled bins. ``bins_after[k]`` is how many bins row k + 1 lies after row k."""
    position = np.r_[0, np.cumsum(bins_after)]  # the bin index of every row
    n_bins = int(position[-1]) + 1
    if n_bins > MAX_TRACE_ROWS:
        raise TraceError(
            path,
            f"filling its gaps would give {n_bins:,} bins, more than {MAX_TRACE_ROWS:,}, the limit for a trace",
        )
    filled = np.ones(n_bins, dtype=bool)
    filled[position] = False
    if gaps == "fill-zero":
        full = np.zeros(n_bins)
        full[position] = counts
    else:
        full = np.interp(np.arange(n_bins, dtype=np.float64), position.astype(np.float64), counts)
    return full, filled


def _to_float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_iso(value: str) -> bool:
    return not pd.isna(pd.to_datetime(value, format="ISO8601", errors="coerce"))

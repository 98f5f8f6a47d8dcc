"""Dates, times and periods in Chinese and English text, resolved against a given ``now``.

Pure: every function takes the text and an aware ``now`` (its time zone is the zone of the result)
and returns what it found with the span it came from, so a caller can take a period out of the
text before it looks for a deadline. Nothing reads the clock.

Conventions (the labeled set in ``data/requests.jsonl`` follows them):

- a day without a time of day is a deadline at 23:59 of that day; "tonight"/"今晚" is 20:00,
  "明早" 09:00, "end of day"/"今天之内" 23:59, "close of business"/"下班前" 18:00;
- "in 2 hours"/"两小时内" is ``now`` + 2 h;
- a month and day without a year is the next such date on or after today;
- a bare hour 1-6 ("by 5 today") is afternoon; 下午/晚上/pm add 12 hours;
- periods: last week is Monday to Sunday before this week, this week/month/year run to today,
  "past 7 days"/"最近7天" end today, "yesterday" is one day.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

_CN_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "俩": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10_000, "亿": 100_000_000}
CN_NUM = "[零〇一二两俩三四五六七八九十百千万亿]+"
NUM = rf"(?:\d+(?:\.\d+)?|{CN_NUM})"

_EN_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "forty-five": 45,
    "sixty": 60,
    "ninety": 90,
}
EN_NUM = (
    r"(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|"
    r"forty-five|forty|sixty|ninety)"
)

_WEEKDAYS_EN = {
    "mon": 0,
    "monday": 0,
    "tue": 1,
    "tues": 1,
    "tuesday": 1,
    "wed": 2,
    "wednesday": 2,
    "thu": 3,
    "thur": 3,
    "thurs": 3,
    "thursday": 3,
    "fri": 4,
    "friday": 4,
    "sat": 5,
    "saturday": 5,
    "sun": 6,
    "sunday": 6,
}
_WEEKDAYS_ZH = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6, "末": 5}
_MONTHS_EN = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_MONTHS_EN.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
_MONTHS_EN["sept"] = 9
MONTH_EN = r"(?:" + "|".join(sorted(_MONTHS_EN, key=len, reverse=True)) + r")\.?"
WEEKDAY_EN = r"(?:" + "|".join(sorted(_WEEKDAYS_EN, key=len, reverse=True)) + r")"


def cn_number(text: str) -> int | None:
    """``"一百五十"`` -> 150, ``"两百"`` -> 200, ``"十五"`` -> 15, ``"三万二"`` -> 32000; None if not one."""
    if not text or any(ch not in _CN_DIGITS and ch not in _CN_UNITS for ch in text):
        return None
    total, section, digit = 0, 0, None
    last_unit = 1
    for ch in text:
        if ch in _CN_DIGITS:
            digit = _CN_DIGITS[ch]
            continue
        unit = _CN_UNITS[ch]
        if unit >= 10_000:
            section = (section + (digit or 0)) * unit
            total += section
            section, digit = 0, None
        else:
            section += (1 if digit is None else digit) * unit
            digit = None
        last_unit = unit
    if digit is not None:
        # "三万二" / "一百五" : a trailing digit counts in the unit below the last one
        section += digit * (last_unit // 10 if last_unit >= 100 and text[-2] in _CN_UNITS else 1)
    return total + section


def to_number(token: str) -> float | None:
    """A number written in digits, Chinese numerals or a small English word."""
    token = token.strip().lower()
    if re.fullmatch(r"(?a)\d+(?:\.\d+)?", token):
        return float(token)
    if token in _EN_NUMBERS:
        return float(_EN_NUMBERS[token])
    n = cn_number(token)
    return None if n is None else float(n)


@dataclass(frozen=True)
class Found:
    """A value found in the text and the span ``[start, end)`` it came from."""

    value: object
    start: int
    end: int


def _next_date(now: datetime, month: int, day: int) -> date | None:
    for year in (now.year, now.year + 1):
        try:
            d = date(year, month, day)
        except ValueError:
            return None
        if d >= now.date():
            return d
    return None


def _weekday_date(now: datetime, weekday: int, week_offset: int | None) -> date:
    """``week_offset`` None: the next such day on or after today; 0 this week's; 1 next week's."""
    today = now.date()
    if week_offset is None:
        return today + timedelta(days=(weekday - today.weekday()) % 7)
    monday = today - timedelta(days=today.weekday())
    return monday + timedelta(days=7 * week_offset + weekday)


# -- days ----------------------------------------------------------------------------------------
_DAY_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?a)(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*[日号]?"), "ymd"),
    (re.compile(rf"(?a)(\d{{1,2}}|{CN_NUM})\s*月\s*(\d{{1,2}}|{CN_NUM})\s*[日号]"), "md_zh"),
    (re.compile(rf"(?a)\b({MONTH_EN})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s*(\d{{4}}))?", re.I), "md_en"),
    (re.compile(rf"(?a)\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({MONTH_EN})\b(?:,?\s*(\d{{4}}))?", re.I), "dm_en"),
    (re.compile(r"(?a)大后天"), "+3"),
    (re.compile(r"(?a)后天|\bday after tomorrow\b", re.I), "+2"),
    (re.compile(r"(?a)明天|明日|明早|明晚|明儿|\btomorrow\b|\btmr\b|\btmrw\b|\btomorow\b", re.I), "+1"),
    (re.compile(r"(?a)今天|今日|今晚|今早|今夜|当天|\btoday\b|\btonight\b|\btonite\b", re.I), "+0"),
    (re.compile(r"(?a)(下下|下|本|这|这个|下个)?\s*(?:周|星期|礼拜)([一二三四五六日天末])"), "wd_zh"),
    (re.compile(rf"(?a)\b(?:(next|this|coming)\s+)?({WEEKDAY_EN})\b", re.I), "wd_en"),
]


def find_days(text: str, now: datetime) -> list[Found]:
    """Every day mentioned, resolved (``Found.value`` is a :class:`date`), in text order, no overlaps."""
    found: list[Found] = []
    taken: list[tuple[int, int]] = []
    for pattern, kind in _DAY_PATTERNS:
        for m in pattern.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            d = _resolve_day(m, kind, now)
            if d is not None:
                found.append(Found(d, m.start(), m.end()))
                taken.append((m.start(), m.end()))
    return sorted(found, key=lambda f: f.start)


def _resolve_day(m: re.Match[str], kind: str, now: datetime) -> date | None:
    try:
        if kind == "ymd":
            return date(int(m[1]), int(m[2]), int(m[3]))
        if kind == "md_zh":
            month, day = to_number(m[1]), to_number(m[2])
            return None if month is None or day is None else _next_date(now, int(month), int(day))
        if kind in ("md_en", "dm_en"):
            month_s, day_s = (m[1], m[2]) if kind == "md_en" else (m[2], m[1])
            month = _MONTHS_EN[month_s.lower().rstrip(".")]
            if m[3]:
                return date(int(m[3]), month, int(day_s))
            return _next_date(now, month, int(day_s))
    except ValueError:
        return None
    if kind.startswith("+"):
        return now.date() + timedelta(days=int(kind[1:]))
    if kind == "wd_zh":
        prefix, wd = m[1] or "", _WEEKDAYS_ZH[m[2]]
        offset = {"": None, "本": 0, "这": 0, "这个": 0, "下": 1, "下个": 1, "下下": 2}[prefix.strip()]
        return _weekday_date(now, wd, offset)
    if kind == "wd_en":
        prefix = (m[1] or "").lower()
        wd = _WEEKDAYS_EN[m[2].lower()]
        offset = {"": None, "this": 0, "coming": None, "next": 1}[prefix]
        d = _weekday_date(now, wd, offset)
        return d if d >= now.date() else d + timedelta(days=7)
    return None


# -- times of day --------------------------------------------------------------------------------
_TIME_ZH = re.compile(
    rf"(凌晨|早上|早晨|上午|中午|下午|傍晚|晚上|今晚|明晚|明早|今早|晚)?\s*(\d{{1,2}}|{CN_NUM})\s*(?:点|:|：|時|时)\s*"
    rf"(半|一刻|三刻|(\d{{1,2}}|{CN_NUM})\s*分?)?"
)
_TIME_EN = re.compile(r"(?a)\b(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.|o'?clock)?\b", re.I)
_TIME_EN_CUE = re.compile(r"(?a)(?:\bat|\bby|\bbefore|@|\buntil|\btill|\bno later than)\s*$", re.I)
_FIXED_TIMES: list[tuple[re.Pattern[str], time]] = [
    (
        re.compile(
            r"(?a)\bend of (?:the )?(?:day|today)\b|\bEOD\b|\bby midnight\b|之内|以内|之前完成|内完成|当天内|今天内|\bend of business\b",
            re.I,
        ),
        time(23, 59),
    ),
    (re.compile(r"(?a)\bclose of business\b|\bCOB\b|下班前|下班之前", re.I), time(18, 0)),
    (re.compile(r"(?a)\bnoon\b|\bmidday\b|中午前|中午之前", re.I), time(12, 0)),
    (re.compile(r"(?a)\btonight\b|\btonite\b|今晚|明晚|今夜", re.I), time(20, 0)),
    (re.compile(r"(?a)\bthis evening\b|\btomorrow evening\b|傍晚|晚上", re.I), time(20, 0)),
    (re.compile(r"(?a)\bthis morning\b|\btomorrow morning\b|明早|今早|早上|上午", re.I), time(9, 0)),
    (re.compile(r"(?a)\bthis afternoon\b|\btomorrow afternoon\b|下午", re.I), time(15, 0)),
]


def find_time(text: str) -> Found | None:
    """The first time of day in the text (``Found.value`` is a :class:`datetime.time`)."""
    m = _TIME_ZH.search(text)
    if m:
        hour = to_number(m[2])
        if hour is not None and 0 <= hour <= 24:
            hour = int(hour)
            minute = 0
            if m[3]:
                minute = {"半": 30, "一刻": 15, "三刻": 45}.get(m[3].strip())  # type: ignore[assignment]
                if minute is None:
                    minute = int(to_number(m[4]) or 0) if m[4] else 0
            period = m[1] or ""
            if (
                (period in ("下午", "傍晚", "晚上", "今晚", "明晚", "晚") and hour < 12)
                or (period == "中午" and hour < 11)
                or (not period and 1 <= hour <= 6 and m[3] is None)
            ):
                hour += 12
            if hour <= 23 and minute < 60:
                return Found(time(hour, minute), m.start(), m.end())
    for m in _TIME_EN.finditer(text):
        hour, minute, suffix = int(m[1]), int(m[2] or 0), (m[3] or "").lower().replace(".", "")
        cue = _TIME_EN_CUE.search(text[: m.start()])
        if not suffix and not m[2] and not cue:
            continue  # a bare number is not a time unless "at 9" / "by 9"
        if suffix.startswith("pm") and hour < 12:
            hour += 12
        elif suffix.startswith("am") and hour == 12:
            hour = 0
        elif not suffix.startswith(("am", "pm")) and 1 <= hour <= 6:
            hour += 12
        if hour <= 23 and minute < 60:
            return Found(time(hour, minute), m.start(), m.end())
    for pattern, t in _FIXED_TIMES:
        m = pattern.search(text)
        if m:
            return Found(t, m.start(), m.end())
    return None


_DURATION_EN = re.compile(
    rf"(?a)\b(?:in|within|in the next|next)\s+({EN_NUM}|half an?)\s*(hours?|hrs?|h|minutes?|mins?)\b", re.I
)
_DURATION_ZH = re.compile(rf"(?a)(半|{NUM})\s*(?:个)?\s*(小时|钟头|分钟)\s*(?:内|之内|以内|后)")


def find_duration_deadline(text: str, now: datetime) -> Found | None:
    """``in 2 hours`` / ``两小时内`` / ``30分钟内``: ``now`` plus the duration."""
    for pattern in (_DURATION_EN, _DURATION_ZH):
        m = pattern.search(text)
        if not m:
            continue
        amount_s, unit = m[1].lower(), m[2].lower()
        amount = 0.5 if amount_s.startswith("half") or amount_s == "半" else to_number(amount_s)
        if amount is None:
            continue
        minutes = amount * 60 if unit.startswith(("h", "小", "钟")) else amount
        if amount_s == "半" and unit == "分钟":
            continue
        return Found(now + timedelta(minutes=minutes), m.start(), m.end())
    return None


def find_deadline(text: str, now: datetime, *, future_only: bool = True) -> Found | None:
    """A deadline: a duration from now, or a day (default today) with a time of day (default 23:59).

    With ``future_only``, a day in the past is not a deadline (it is a period or a cut-off date)."""
    dur = find_duration_deadline(text, now)
    if dur is not None:
        return dur
    days = [d for d in find_days(text, now) if not future_only or d.value >= now.date()]  # type: ignore[operator]
    t = find_time(text)
    if not days and t is None:
        return None
    if days:
        day_found = days[0]
        day: date = day_found.value  # type: ignore[assignment]
        start, end = day_found.start, day_found.end
    else:
        day, start, end = now.date(), t.start, t.end  # type: ignore[union-attr]
    tod = t.value if t is not None else time(23, 59)
    when = datetime.combine(day, tod, tzinfo=now.tzinfo)  # type: ignore[arg-type]
    if t is not None:
        start, end = min(start, t.start), max(end, t.end)
    return Found(when, start, end)


# -- periods -------------------------------------------------------------------------------------
def _month_range(year: int, month: int) -> tuple[date, date]:
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


_RANGE_SEP = r"\s*(?:到|至|~|～|—|–|-|\bto\b|\bthrough\b|\btill\b|\buntil\b|\band\b)\s*"


def find_period(text: str, now: datetime) -> Found | None:
    """A reporting period (``Found.value`` is ``(first_day, last_day)``)."""
    today = now.date()
    # explicit ranges first: two days joined by "to"/"到"/"~"
    days = find_days(text, now)
    past_ok = [d for d in find_days_any_year(text, now)]
    for a, b in zip(past_ok, past_ok[1:]):
        between = text[a.end : b.start]
        if re.fullmatch(_RANGE_SEP, between, re.I | re.A) or re.fullmatch(r"(?a)\s*(?:从|from)?\s*", between):
            if b.value >= a.value and re.fullmatch(_RANGE_SEP, between, re.I | re.A):  # type: ignore[operator]
                return Found((a.value, b.value), a.start, b.end)
    # "11月1日到15日", "Nov 1-15", "Nov 1 to 15"
    m = re.search(
        rf"(?a)(\d{{1,2}}|{CN_NUM})\s*月\s*(\d{{1,2}}|{CN_NUM})\s*[日号]?{_RANGE_SEP}(\d{{1,2}}|{CN_NUM})\s*[日号]",
        text,
    )
    if m:
        mo, d1, d2 = (int(to_number(x) or 0) for x in (m[1], m[2], m[3]))
        r = _past_range(now, mo, d1, d2)
        if r:
            return Found(r, m.start(), m.end())
    m = re.search(
        rf"(?a)\b({MONTH_EN})\s+(\d{{1,2}})(?:st|nd|rd|th)?{_RANGE_SEP}(\d{{1,2}})(?:st|nd|rd|th)?\b", text, re.I
    )
    if m:
        r = _past_range(now, _MONTHS_EN[m[1].lower().rstrip(".")], int(m[2]), int(m[3]))
        if r:
            return Found(r, m.start(), m.end())
    monday = today - timedelta(days=today.weekday())
    named: list[tuple[str, tuple[date, date]]] = [
        (r"上上周|上上个?星期|\btwo weeks ago\b", (monday - timedelta(days=14), monday - timedelta(days=8))),
        (
            r"上周|上个?星期|上个?礼拜|\blast week\b|\bprevious week\b|\bpast week\b",
            (monday - timedelta(days=7), monday - timedelta(days=1)),
        ),
        (r"本周|这周|这个?星期|这个?礼拜|\bthis week\b", (monday, today)),
        (r"上个?月|\blast month\b|\bprevious month\b|\bpast month\b", _month_range(*_prev_month(today))),
        (r"本月|这个?月|当月|\bthis month\b|\bmonth to date\b|\bMTD\b", (today.replace(day=1), today)),
        (r"昨天|昨日|\byesterday\b", (today - timedelta(days=1), today - timedelta(days=1))),
        (r"今天|今日|\btoday\b", (today, today)),
        (r"去年|\blast year\b", (date(today.year - 1, 1, 1), date(today.year - 1, 12, 31))),
        (r"今年|\bthis year\b|\bYTD\b|\byear to date\b", (date(today.year, 1, 1), today)),
        (r"上个?季度|\blast quarter\b|\bprevious quarter\b", _prev_quarter(today)),
    ]
    m = re.search(
        rf"(?a)(?:最近|近|过去|前)\s*({NUM})\s*(?:天|日)|\b(?:past|last|previous)\s+({EN_NUM})\s+days\b", text, re.I
    )
    if m:
        n = to_number(m[1] or m[2])
        if n and n >= 1:
            return Found((today - timedelta(days=int(n) - 1), today), m.start(), m.end())
    for pattern, rng in named:
        m = re.search(pattern, text, re.I | re.A)
        if m:
            return Found(rng, m.start(), m.end())
    # a whole month: "2026年10月", "10月份", "October 2026", "in October"
    m = re.search(
        rf"(?a)(?:(\d{{4}})\s*年\s*)?(\d{{1,2}}|{CN_NUM})\s*月份?(?![\d零〇一二两三四五六七八九十]*\s*[日号])", text
    )
    if m:
        mo = int(to_number(m[2]) or 0)
        if 1 <= mo <= 12:
            year = int(m[1]) if m[1] else (today.year if mo <= today.month else today.year - 1)
            return Found(_clip(_month_range(year, mo), today), m.start(), m.end())
    m = re.search(rf"(?a)\b({MONTH_EN})(?:\s+(\d{{4}}))?\b(?!\s+\d)", text, re.I)
    # "may" and "march" are also words: a month name alone counts only after "in"/"for"/"of"
    if m and (
        m[2]
        or m[1].lower().rstrip(".") not in ("may", "mar", "march")
        or re.search(r"(?a)\b(?:in|for|of|during)\s+$", text[: m.start()], re.I)
    ):
        mo = _MONTHS_EN[m[1].lower().rstrip(".")]
        year = int(m[2]) if m[2] else (today.year if mo <= today.month else today.year - 1)
        return Found(_clip(_month_range(year, mo), today), m.start(), m.end())
    if len(days) == 1:  # a single day: that day's report
        d = days[0]
        return Found((d.value, d.value), d.start, d.end)
    return None


def find_days_any_year(text: str, now: datetime) -> list[Found]:
    """Like :func:`find_days`, but a month-day without a year is the most recent such day (periods
    look back, deadlines forward)."""
    out = []
    for f in find_days(text, now):
        d: date = f.value  # type: ignore[assignment]
        if (
            d > now.date()
            and not re.search(r"(?a)\d{4}", text[f.start : f.end])
            and not _is_relative(text[f.start : f.end])
        ):
            try:
                d = d.replace(year=d.year - 1) if d.year > now.year or d > now.date() else d
            except ValueError:
                pass
        out.append(Found(d, f.start, f.end))
    return out


def _is_relative(s: str) -> bool:
    return bool(
        re.search(r"(?a)[天日周星期礼拜]|day|tom|tod|ton|mon|tue|wed|thu|fri|sat|sun", s, re.I)
    ) and not re.search(r"(?a)月", s)


def _past_range(now: datetime, month: int, d1: int, d2: int) -> tuple[date, date] | None:
    year = now.year if month <= now.month else now.year - 1
    try:
        a, b = date(year, month, d1), date(year, month, d2)
    except ValueError:
        return None
    return (a, b) if b >= a else None


def _clip(rng: tuple[date, date], today: date) -> tuple[date, date]:
    return (rng[0], min(rng[1], today))


def _prev_month(today: date) -> tuple[int, int]:
    return (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)


def _prev_quarter(today: date) -> tuple[date, date]:
    q = (today.month - 1) // 3
    year, q = (today.year, q - 1) if q > 0 else (today.year - 1, 3)
    return date(year, 3 * q + 1, 1), _month_range(year, 3 * q + 3)[1]


# -- cut-off dates ("older than 90 days", "2025年1月1日之前") ---------------------------------------
_OLDER_THAN = re.compile(
    rf"(?:older than|more than|over)\s+({EN_NUM})\s+(days?|weeks?|months?|years?)(?:\s+old)?"
    rf"|({NUM})\s*(天|周|个月|月|年)(?:以前|之前|前)"
    rf"|(?:超过|超出|大于)\s*({NUM})\s*(天|周|个月|月|年)",
    re.I,
)


def find_cutoff(text: str, now: datetime) -> Found | None:
    """The day before which data is old: a relative age, or a day in the past."""
    m = _OLDER_THAN.search(text)
    if m:
        amount_s = m[1] or m[3] or m[5]
        unit = (m[2] or m[4] or m[6]).lower()
        n = to_number(amount_s)
        if n is not None:
            n_i = int(n)
            today = now.date()
            if unit.startswith(("day", "天")):
                d = today - timedelta(days=n_i)
            elif unit.startswith(("week", "周")):
                d = today - timedelta(weeks=n_i)
            elif unit.startswith(("month", "个月", "月")):
                y, mo = divmod(today.year * 12 + today.month - 1 - n_i, 12)
                d = date(y, mo + 1, min(today.day, calendar.monthrange(y, mo + 1)[1]))
            else:
                d = today.replace(year=today.year - n_i)
            return Found(d, m.start(), m.end())
    for f in find_days_any_year(text, now):
        if f.value < now.date():  # type: ignore[operator]
            return f
    # "before 2025" / "2024年以前" : the first day of the following year
    m = re.search(r"(?a)(?:before|prior to|older than)\s+(\d{4})\b|(\d{4})\s*年\s*(?:以前|之前|前)", text, re.I)
    if m:
        year = int(m[1] or m[2])
        return Found(date(year, 1, 1), m.start(), m.end())
    return None

"""Offline parameter extraction: one extractor per parameter name, pure functions of text and ``now``.

An extractor returns the normalised value (the form the task type's :class:`~core.config.ParamSpec`
checks) or ``None``. :func:`extract_params` runs the extractors a task type's schema names, in an
order that lets a period or a cut-off date claim its words before the deadline looks for a date.
A parameter with no extractor here can be filled only by the LLM backend; offline it is reported
missing if required.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import cast

from core.config import ParamSpec
from intake_nl.timeexpr import CN_NUM, EN_NUM, Found, find_cutoff, find_deadline, find_period, to_number


def normalise_text(text: str) -> str:
    """NFKC (full-width ＃１２ -> #12), collapsed whitespace: what every extractor reads."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


_ORDER_PATTERNS = [
    re.compile(r"(?a)\bORD(?:ER)?[-_ #:]*(\d{5,8})\b", re.I),
    re.compile(
        r"(?a)(?:\border|订单|单号|订单号|order number|order no\.?|order id)\s*(?:号|编号|no\.?|number|id|#|:)?\s*[:#]?\s*(\d{5,8})(?!\d)",
        re.I,
    ),
    re.compile(r"(?a)#\s*(\d{5,8})(?!\d)"),
]


def order_id(text: str, now: datetime) -> str | None:
    for p in _ORDER_PATTERNS:
        m = p.search(text)
        if m:
            return f"ORD-{m[1]}"
    # a lone 5-8 digit number in a message about orders
    if re.search(r"(?a)order|订单|单", text, re.I):
        nums = re.findall(r"(?a)(?<![\d.])(\d{5,8})(?![\d.])", text)
        if len(nums) == 1:
            return f"ORD-{nums[0]}"
    return None


_SKU_PATTERNS = [
    re.compile(r"(?a)\bSKU\s*[-_:#]?\s*([A-Z0-9]*\d[A-Z0-9]*(?:-[A-Z0-9]+)?)\b", re.I),
    re.compile(
        r"(?a)(?:货号|商品编号|商品编码|产品编号|产品编码|商品|产品|item|product)\s*(?:号|no\.?|#|id)?\s*[:#]?\s*"
        r"(?:SKU[-_]?)?([A-Z]*\d[A-Z0-9]*)\b",
        re.I,
    ),
]


def sku(text: str, now: datetime) -> str | None:
    for p in _SKU_PATTERNS:
        m = p.search(text)
        if m:
            code = m[1].upper().replace("-", "")
            if 2 <= len(code) <= 12:
                return f"SKU-{code}"
    return None


_CNY = r"(?:元|块钱|块|圆|rmb|RMB|cny|CNY|人民币|yuan|kuai)"
_USD = r"(?:dollars?|bucks|usd|USD|美元|美金|刀)"
_EN_AMOUNT = (
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|sixty|"
    r"seventy|eighty|ninety|a hundred|one hundred|two hundred|five hundred)"
)
_AMOUNT_PATTERNS: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"(?a)[¥￥]\s*(\d+(?:,\d{3})*(?:\.\d+)?)"), "CNY"),
    (re.compile(r"(?a)(?:RMB|CNY|人民币)\s*(\d+(?:,\d{3})*(?:\.\d+)?)", re.I), "CNY"),
    (re.compile(r"(?a)\$\s*(\d+(?:,\d{3})*(?:\.\d+)?)"), "USD"),
    (re.compile(r"(?a)\bUSD\s*(\d+(?:,\d{3})*(?:\.\d+)?)", re.I), "USD"),
    (
        re.compile(
            rf"(?a)(\d+(?:,\d{{3}})*(?:\.\d+)?|{CN_NUM})\s*{_CNY}(?:\s*([零一二两三四五六七八九]|\d)(?![\d.])\s*毛?)?",
            re.I,
        ),
        "CNY",
    ),
    (re.compile(rf"(?a)(\d+(?:,\d{{3}})*(?:\.\d+)?|{CN_NUM}|\b{_EN_AMOUNT})\s*{_USD}", re.I), "USD"),
]


def _amount_number(token: str) -> float | None:
    words = {
        "fifty": 50,
        "seventy": 70,
        "eighty": 80,
        "a hundred": 100,
        "one hundred": 100,
        "two hundred": 200,
        "five hundred": 500,
    }
    return float(words[token.lower()]) if token.lower() in words else to_number(token)


@functools.lru_cache(maxsize=64)  # amount and currency both read it, for one request
def _amount_and_currency(text: str) -> tuple[float, str | None] | None:
    for p, currency in _AMOUNT_PATTERNS:
        for m in p.finditer(text):
            n = _amount_number(m[1].replace(",", ""))
            if n is None or n <= 0:
                continue
            if p.groups >= 2 and m.lastindex and m.lastindex >= 2 and m[2]:
                n += (to_number(m[2]) or 0) / 10
            return round(n, 2), currency
    # no currency: a number right after "refund"/"amount"/"退"
    bare = re.search(
        r"(?a)(?:refund(?:ed)?|amount(?: of)?|金额|退款?|退还|退回|return)\s*(?:of|:)?\s*(\d+(?:\.\d+)?)(?!\d)",
        text,
        re.I,
    )
    if bare and len(bare[1].split(".")[0]) < 5:
        return float(bare[1]), None
    return None


def amount(text: str, now: datetime) -> float | None:
    found = _amount_and_currency(text)
    return None if found is None else found[0]


def currency(text: str, now: datetime) -> str | None:
    found = _amount_and_currency(text)
    return None if found is None else found[1]


_PRIORITY = [
    (
        "low",
        re.compile(
            r"(?a)\blow[- ]priority\b|\bno rush\b|\bnot urgent\b|\bwhenever\b|\bno hurry\b|\bwhen(?:ever)? you (?:can|get a chance)"
            r"|\blow pri\b|\bprio(?:rity)?\s*[:=]?\s*low\b|优先级[:：]?\s*低|不急|不着急|有空再|有空的时候|低优先级|慢慢来|不用太急",
            re.I,
        ),
    ),
    (
        "normal",
        re.compile(
            r"(?a)\b(?:normal|regular|medium|standard)[- ]priority\b|\bprio(?:rity)?\s*[:=]?\s*(?:normal|medium)\b"
            r"|普通优先级|正常优先级|普通处理|优先级[:：]?\s*(?:普通|正常|中)",
            re.I,
        ),
    ),
    (
        "high",
        re.compile(
            r"(?a)\burge?n?t(?:ly)?\b|\burgnt\b|\basap\b|\brush\b|\bhigh[- ]prio(?:rity)?\b|\bprio(?:rity)?\s*[:=]?\s*high\b"
            r"|\btop[- ]priority\b|\bimmediately\b|\bright away\b|\bcritical\b|\bexpedite\b|优先级[:：]?\s*高"
            r"|\bcustomer is waiting\b|\bhot\b|紧急|加急|尽快|马上|立刻|立即|优先|火速|急件|很急|特急|十万火急|赶紧|高优先级",
            re.I,
        ),
    ),
]


def priority(text: str, now: datetime) -> str | None:
    for level, p in _PRIORITY:
        if p.search(text):
            return level
    return None


_WAREHOUSES = {
    "SH": r"上海|沪|\bshanghai\b|\bSH\b",
    "BJ": r"北京|京仓|\bbeijing\b|\bBJ\b",
    "GZ": r"广州|\bguangzhou\b|\bGZ\b",
    "SZ": r"深圳|\bshenzhen\b|\bSZ\b",
}


def warehouse(text: str, now: datetime) -> str | None:
    for code, pattern in _WAREHOUSES.items():
        if re.search(pattern, text, re.I | re.A):
            return code
    return None


def quantity(text: str, now: datetime) -> int | None:
    m = re.search(
        rf"(?a)(\d+|{CN_NUM}|\b{EN_NUM})\s*-?\s*(?:units?|pcs|pieces?|items?|boxes|cases|件|个|台|套|箱|盒|双|只|份|瓶|包)",
        text,
        re.I,
    )
    if m:
        n = to_number(m[1])
        if n is not None and n == int(n) and n > 0:
            return int(n)
    m = re.search(
        r"(?a)\b(?:at least|need|have|got|stock of|want)\s+(\d+)\b(?!\s*(?:hours?|days?|minutes?))", text, re.I
    )
    if m:
        return int(m[1])
    return None


_REPORT_TYPES = [
    ("refunds", r"refund|退款|退货|退单"),
    ("inventory", r"inventory|stock|库存|存货"),
    ("sales", r"sales|revenue|gmv|销售|销量|营收|营业额|成交"),
    ("orders", r"orders?\b|订单"),
]


def report_type(text: str, now: datetime) -> str | None:
    for kind, pattern in _REPORT_TYPES:
        if re.search(pattern, text, re.I | re.A):
            return kind
    return None


def report_format(text: str, now: datetime) -> str | None:
    if re.search(r"(?a)\bpdf\b", text, re.I):
        return "pdf"
    if re.search(r"(?a)\bcsv\b", text, re.I):
        return "csv"
    if re.search(r"(?a)\bexcel\b|\bxlsx?\b|电子表格", text, re.I):
        return "xlsx"
    return None


_DATASET_STOP = {
    "the",
    "and",
    "for",
    "from",
    "data",
    "table",
    "dataset",
    "all",
    "old",
    "rows",
    "records",
    "please",
    "clean",
    "purge",
    "delete",
    "remove",
    "archive",
    "dedupe",
    "deduplicate",
    "logs",
    "log",
    "than",
    "older",
    "before",
    "days",
    "by",
    "sku",
    "ord",
    "asap",
    "urgent",
    "pdf",
    "csv",
    "excel",
    "today",
    "tomorrow",
    "tonight",
    "duplicate",
    "duplicates",
    "entries",
    "stale",
    "up",
    "out",
    "in",
    "on",
    "of",
    "order_processing",
    "refund",
    "check_inventory",
    "generate_report",
    "clean_data",
}


def dataset(text: str, now: datetime) -> str | None:
    quoted = re.search(r"(?a)[`'\"“‘「]([A-Za-z][A-Za-z0-9_.]{1,63})[`'\"”’」]", text)
    if quoted:
        return quoted[1].lower().split(".")[-1]
    named = re.search(r"(?a)\b(?:dataset|table)\s*[=:]\s*([A-Za-z][A-Za-z0-9_]{1,63})", text, re.I)
    if named:
        return named[1].lower()
    idents = [
        i
        for i in re.findall(r"(?a)(?<![A-Za-z0-9_])([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+)(?![A-Za-z0-9_])", text)
        if i.lower() not in _DATASET_STOP
    ]
    if idents:
        return idents[0].lower()
    m = re.search(
        r"(?a)\b(?:table|dataset|collection|index)\s+([a-z][a-z0-9]{2,63})\b|\b([a-z][a-z0-9]{2,63})\s+(?:table|dataset|collection)\b",
        text,
        re.I,
    )
    if m and (m[1] or m[2]).lower() not in _DATASET_STOP:
        return (m[1] or m[2]).lower()
    m = re.search(r"(?a)([a-z][a-z0-9]{2,63})\s*(?:表|数据集|库|里|中|的)", text)
    if m and m[1].lower() not in _DATASET_STOP:
        return m[1].lower()
    return None


Extractor = Callable[[str, datetime], object]
EXTRACTORS: dict[str, Extractor] = {
    "order_id": order_id,
    "sku": sku,
    "amount": amount,
    "currency": currency,
    "priority": priority,
    "warehouse": warehouse,
    "quantity": quantity,
    "report_type": report_type,
    "format": report_format,
    "dataset": dataset,
}


def _blank(text: str, found: Found) -> str:
    return text[: found.start] + " " * (found.end - found.start) + text[found.end :]


def extract_params(text: str, params: Mapping[str, ParamSpec], now: datetime) -> dict[str, object]:
    """Every parameter of ``params`` the text gives, normalised; the ones it does not give are left out.

    Dates first, since one date cannot be two things: a period (``start_date``/``end_date``) or a
    cut-off (``before_date``) takes its words out of the text before the deadline looks."""
    text = normalise_text(text)
    out: dict[str, object] = {}
    rest = text
    if "start_date" in params or "end_date" in params:
        period = find_period(rest, now)
        if period is not None:
            first, last = cast("tuple[date, date]", period.value)
            out["start_date"], out["end_date"] = first.isoformat(), last.isoformat()
            rest = _blank(rest, period)
    if "before_date" in params:
        cutoff = find_cutoff(rest, now)
        if cutoff is not None:
            out["before_date"] = cutoff.value.isoformat()  # type: ignore[attr-defined]
            rest = _blank(rest, cutoff)
    for name, spec in params.items():
        if name in out:
            continue
        if spec.type == "datetime":
            found = find_deadline(rest, now)
            if found is not None:
                out[name] = found.value.isoformat()  # type: ignore[attr-defined]
            continue
        fn = EXTRACTORS.get(name)
        if fn is not None:
            value = fn(rest, now)
            if value is not None:
                out[name] = value
    return out


# -- requests no backend should turn into a task ---------------------------------------------------
_MANIPULATION = re.compile(
    r"(?a)\b(?:ignore|disregard|forget|override)\b.{0,30}\b(?:instructions?|rules?|prompt|guidelines|polic(?:y|ies))\b"
    r"|\b(?:developer|admin|god|dan|jailbreak)\s+mode\b|\byou are now\b|\bpretend (?:you(?:'re| are)?|to be)\b|\bact as\b"
    r"|\bsystem(?: prompt| override)?\s*[:：]|\bnew instructions?\b|\bgrant (?:me )?(?:admin|root|all)"
    r"|忽略.{0,12}(?:指令|指示|规则|提示|设定)|无视.{0,12}(?:指令|规则)|你现在是|你已(?:经)?获得|开发者模式|管理员模式|系统提示\s*[:：]"
    r"|假装你是|扮演|最高权限|越狱",
    re.I,
)
_UNSCOPED = re.compile(
    r"(?a)\b(?:all|every|each|any and all|the whole|entire)\b\s+(?:[a-z]+\s+){0,2}?"
    r"(?:orders?|users?|customers?|accounts?|refunds?|tasks?|items?|products?|skus?|stock|inventory|data|tables?|records?)\b"
    r"|所有|全部|一切|每一?[个笔单]|全体|统统|通通",
    re.I,
)


def manipulation(text: str) -> str | None:
    """Why the text reads as an attempt to instruct the parser rather than a request, or None."""
    m = _MANIPULATION.search(normalise_text(text))
    return None if m is None else f"the request tries to instruct the parser ({m.group(0)[:40]!r})"


def unscoped(text: str) -> str | None:
    """The words that make a request unscoped ("all orders", "所有订单"), or None."""
    m = _UNSCOPED.search(normalise_text(text))
    return None if m is None else m.group(0)

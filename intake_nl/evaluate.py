"""Intent accuracy and parameter completeness of a parser on labeled requests.

- intent accuracy: share of requests whose intent (``none`` included) the parser got right;
- parameter completeness: of the parameters the labels give (requests with a real intent), the
  share the parser returned with exactly the labeled value (a wrong intent returns none of them);
- parameter precision: of the parameters the parser returned, the share that are labeled and right;
- exact: intent right and the parameters exactly the labeled ones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from intake_nl.dataset import Example
from intake_nl.instruction import NONE_INTENT
from intake_nl.parser import TaskParser


@dataclass
class Score:
    n: int = 0
    intent_ok: int = 0
    params_labeled: int = 0
    params_right: int = 0
    params_returned: int = 0
    exact: int = 0

    @property
    def intent_accuracy(self) -> float:
        return self.intent_ok / self.n if self.n else float("nan")

    @property
    def param_completeness(self) -> float:
        return self.params_right / self.params_labeled if self.params_labeled else float("nan")

    @property
    def param_precision(self) -> float:
        return self.params_right / self.params_returned if self.params_returned else float("nan")

    @property
    def exact_share(self) -> float:
        return self.exact / self.n if self.n else float("nan")


@dataclass
class Evaluation:
    backend: str
    overall: Score = field(default_factory=Score)
    by_lang: dict[str, Score] = field(default_factory=dict)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (id, what, detail)
    fallbacks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        def row(s: Score) -> dict[str, object]:
            return {
                "n": s.n,
                "intent_accuracy": s.intent_accuracy,
                "param_completeness": s.param_completeness,
                "param_precision": s.param_precision,
                "exact": s.exact_share,
            }

        return {
            "backend": self.backend,
            **row(self.overall),
            "by_lang": {k: row(v) for k, v in self.by_lang.items()},
            "fallbacks": self.fallbacks,
            "seconds": self.seconds,
        }


def evaluate(parser: TaskParser, examples: Sequence[Example], now: datetime, backend: str = "") -> Evaluation:
    """Parse every example at ``now`` and score it against its labels."""
    ev = Evaluation(backend or parser.backend)
    t0 = time.perf_counter()
    for ex in examples:
        ins = parser.parse(ex.text, now)
        if ins.fallback:
            ev.fallbacks += 1
        predicted = ins.intent or NONE_INTENT
        for score in (ev.overall, ev.by_lang.setdefault(ex.lang, Score())):
            score.n += 1
            intent_ok = predicted == ex.intent
            score.intent_ok += intent_ok
            right = {k for k, v in ex.params.items() if ins.params.get(k) == v} if intent_ok else set()
            if ex.intent != NONE_INTENT:
                score.params_labeled += len(ex.params)
                score.params_right += len(right)
            score.params_returned += len(ins.params)
            score.exact += intent_ok and ins.params == ex.params
        if predicted != ex.intent:
            ev.errors.append((ex.id, "intent", f"{ex.intent} -> {predicted} ({ins.confidence:.2f})"))
        elif ins.params != ex.params:
            ev.errors.append((ex.id, "params", f"labeled {ex.params} got {ins.params}"))
    ev.seconds = time.perf_counter() - t0
    return ev

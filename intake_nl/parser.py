"""``TaskParser.parse(text) -> TaskInstruction``: intent recognition, then parameter extraction.

Two backends behind one interface:

- ``offline`` (no network): the character-n-gram intent classifier trained on the shipped examples
  (:mod:`intake_nl.classifier`) and the per-parameter extractors (:mod:`intake_nl.extract`);
- ``llm``: an OpenAI-compatible chat-completions endpoint (:mod:`intake_nl.llm`), DeepSeek's API
  included. When it cannot answer (unreachable, timed out, breaker open, garbled JSON) the parser
  falls back to ``offline`` and says so in ``TaskInstruction.fallback``.

``backend="auto"`` (the default) uses the LLM when one is configured, else offline. The intake
only ever yields registered task types with schema-checked parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

from core.config import AutotuneConfig
from intake_nl.classifier import IntentClassifier
from intake_nl.dataset import load_examples
from intake_nl.extract import extract_params, manipulation, normalise_text, unscoped
from intake_nl.instruction import NONE_INTENT, TaskInstruction, check_params
from intake_nl.llm import (
    ChatCompletionsClient,
    LLMSettings,
    LLMUnavailable,
    build_messages,
    interpret_answer,
    resolve_llm_settings,
)

MAX_TEXT_CHARS = 2000


class ParserError(ValueError):
    """A request the parser will not read at all (empty, too long) or a backend that cannot be had."""


_default_classifier: IntentClassifier | None = None


def default_classifier() -> IntentClassifier:
    """The classifier trained on the shipped training split (trained once per process)."""
    global _default_classifier
    if _default_classifier is None:
        train = load_examples(split="train")
        _default_classifier = IntentClassifier().fit([e.text for e in train], [e.intent for e in train])
    return _default_classifier


class TaskParser:
    """Parse requests against ``cfg``'s task registry.

    Arguments:
        backend: ``auto``, ``offline`` or ``llm`` (default: ``cfg.intake.nl.backend``). ``llm``
            without a configured endpoint is a ParserError naming the settings to give.
        classifier: the offline intent classifier (default: trained on the shipped examples).
        llm: the chat-completions client (default: built from config and environment).
        clock: ``now`` for relative dates (default: the wall clock in the configured zone).
    """

    def __init__(
        self,
        cfg: AutotuneConfig,
        *,
        backend: str | None = None,
        classifier: IntentClassifier | None = None,
        llm: ChatCompletionsClient | None = None,
        clock: Callable[[], datetime] | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        nl = cfg.intake.nl
        self.tz = ZoneInfo(nl.timezone)
        self.threshold = nl.confidence_threshold
        self.backend = backend or nl.backend
        if self.backend not in ("auto", "offline", "llm"):
            raise ParserError(f"unknown intake backend {self.backend!r}; choose auto, offline or llm")
        self._classifier = classifier
        self.clock = clock or (lambda: datetime.now(self.tz))
        settings: LLMSettings | None = None
        if llm is None and self.backend != "offline":
            settings = resolve_llm_settings(nl.llm, environ)
            if settings is not None:
                llm = ChatCompletionsClient(settings, nl.llm)
        if self.backend == "llm" and llm is None:
            raise ParserError(
                "backend llm: no LLM configured; set AUTOTUNE_LLM_BASE_URL and AUTOTUNE_LLM_MODEL "
                "(and AUTOTUNE_LLM_API_KEY), or DEEPSEEK_API_KEY, or intake.nl.llm in the config"
            )
        self.llm = None if self.backend == "offline" else llm

    @property
    def classifier(self) -> IntentClassifier:
        if self._classifier is None:
            self._classifier = default_classifier()
        return self._classifier

    @property
    def uses_llm(self) -> bool:
        return self.llm is not None

    def parse(self, text: str, now: datetime | None = None) -> TaskInstruction:
        """The instruction for ``text`` (never raises for what the text says; ParserError for no text)."""
        if not isinstance(text, str) or not text.strip():
            raise ParserError("the request is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise ParserError(f"the request is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        now = now or self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=self.tz)
        refused = manipulation(text)
        if refused is not None:  # the same rule for every backend: the text is data, never instructions
            return TaskInstruction(text, None, {}, 1.0, "rules", problems=(refused,))
        if self.llm is not None:
            try:
                answer = self.llm.complete(build_messages(text, self.cfg, now))
                return interpret_answer(answer, text, self.cfg, self.tz)
            except LLMUnavailable as err:
                offline = self.parse_offline(text, now)
                return replace(offline, fallback=f"LLM unavailable: {err}")
        return self.parse_offline(text, now)

    def parse_offline(self, text: str, now: datetime) -> TaskInstruction:
        """The offline backend: classify, then extract the intent's parameters."""
        scores = self.classifier.scores(text)
        registered = {k: v for k, v in scores.items() if k == NONE_INTENT or k in self.cfg.tasks}
        best = max(registered, key=registered.__getitem__)
        confidence = registered[best]
        if best == NONE_INTENT:
            return TaskInstruction(text, None, {}, confidence, "offline", scores=scores)
        spec = self.cfg.tasks[best].params
        raw = extract_params(normalise_text(text), spec, now)
        params, missing, problems = check_params(spec, raw, self.tz)
        mass = unscoped(text)
        if missing and mass is not None:
            # "refund all orders": no single task to submit, and not something to guess at
            return TaskInstruction(
                text,
                None,
                {},
                confidence,
                "offline",
                scores=scores,
                problems=(f"{best!r} without {', '.join(missing)} for {mass!r}: an unscoped request is not a task",),
            )
        return TaskInstruction(
            text, best, params, confidence, "offline", missing=missing, problems=problems, scores=scores
        )

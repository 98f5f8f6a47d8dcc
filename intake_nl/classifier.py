"""The offline intent classifier: character n-grams and a logistic regression (scikit-learn).

Character n-grams (1-4, inside word boundaries) need no tokenizer, so one model reads Chinese and
English alike; digits are folded to ``0`` so order ids and amounts do not decide the intent.
Training on the shipped examples takes well under a second, so the model is trained when first
needed rather than shipped as a pickle (no unpickling of files, nothing to go stale).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from intake_nl.extract import normalise_text


def _prepare(text: str) -> str:
    return re.sub(r"\d", "0", normalise_text(text).lower())


class IntentClassifier:
    """``fit(texts, labels)``, then ``scores(text) -> {label: probability}``. Deterministic."""

    def __init__(self, *, c: float = 20.0, seed: int = 0) -> None:
        self.pipeline = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=1, preprocessor=_prepare),
            LogisticRegression(C=c, max_iter=5000, random_state=seed),
        )
        self.labels: tuple[str, ...] = ()

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> IntentClassifier:
        if len(texts) != len(labels) or len(set(labels)) < 2:
            raise ValueError("need as many labels as texts and at least two distinct labels")
        self.pipeline.fit(list(texts), list(labels))
        self.labels = tuple(str(c) for c in self.pipeline.classes_)
        return self

    def scores(self, text: str) -> dict[str, float]:
        if not self.labels:
            raise RuntimeError("the classifier is not trained")
        probs = self.pipeline.predict_proba([text])[0]
        return {label: float(p) for label, p in zip(self.labels, np.asarray(probs))}

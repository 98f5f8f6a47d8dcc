"""Cross-validated intent accuracy of the offline intake classifier on the training split alone,
and what each confidence threshold would answer (the held-back split stays unseen).

    python benchmarks/intake_cv.py [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import random

import numpy as np

from core.provenance import git_revision
from intake_nl.classifier import IntentClassifier
from intake_nl.dataset import load_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ex = load_examples(split="train")
    idx = list(range(len(ex)))
    random.Random(args.seed).shuffle(idx)
    conf, right = [], []
    for k in range(args.folds):
        held = set(idx[k :: args.folds])
        clf = IntentClassifier().fit(
            [ex[i].text for i in idx if i not in held], [ex[i].intent for i in idx if i not in held]
        )
        for i in held:
            scores = clf.scores(ex[i].text)
            best = max(scores, key=scores.__getitem__)
            conf.append(scores[best])
            right.append(best == ex[i].intent)
    c, r = np.array(conf), np.array(right)
    print(
        f"# git {git_revision()[:12]}; {platform.machine()}; {len(ex)} training requests; "
        f"{args.folds}-fold cross-validation, seed {args.seed}"
    )
    print(f"intent accuracy (every request answered): {r.mean():.1%}")
    print(f"{'threshold':>9} {'answered':>9} {'right when answered':>20}")
    for t in (0.3, 0.4, 0.5, 0.6):
        a = c >= t
        print(f"{t:>9.1f} {a.mean():>9.1%} {r[a].mean():>20.1%}")


if __name__ == "__main__":
    main()

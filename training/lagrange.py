"""The ``constrained`` reward's multiplier, raised and lowered by dual ascent during training.

:class:`LagrangeCallback` counts, over each rollout, the intervals that met all three SLIs (from
the steps' ``info["record"]``, judged by :func:`core.domain.sli_status`, the definition every
report uses), and at the rollout's end moves the multiplier by :func:`envs.rewards.dual_update`
towards ``control.attainment_target`` and pushes it to every training environment
(``VecEnv.env_method("set_lagrange_multiplier", ...)``), so the next rollout is priced anew. It logs
``lagrange/multiplier`` and ``lagrange/attainment`` (TensorBoard, and the console at verbose 1).
The evaluation environment keeps the initial multiplier, so its rewards stay comparable from one
evaluation to the next.
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from core.config import SLIConfig
from core.domain import sli_status
from envs.rewards import dual_update


class LagrangeCallback(BaseCallback):
    def __init__(self, slis: SLIConfig, target: float, initial: float, lr: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        if not 0 < target <= 1:
            raise ValueError(f"attainment target must be in (0, 1], got {target}")
        if initial < 0 or lr < 0:
            raise ValueError(f"the multiplier and its step must be >= 0, got {initial}, {lr}")
        self.slis = slis
        self.target = target
        self._initial = float(initial)
        self.multiplier = float(initial)
        self.lr = lr
        self.history: list[tuple[int, float, float]] = []  # (timesteps, attainment, multiplier after)
        self._met = 0
        self._intervals = 0

    def summary(self) -> dict[str, Any]:
        """What the run's ``model_meta.json`` records: the final multiplier and its course."""
        return {
            "target": self.target,
            "initial": self._initial,
            "lr": self.lr,
            "multiplier": self.multiplier,
            "per_rollout": [{"timesteps": t, "attainment": a, "multiplier": m} for t, a, m in self.history],
        }

    def _on_training_start(self) -> None:
        self.training_env.env_method("set_lagrange_multiplier", self.multiplier)

    def _on_rollout_start(self) -> None:
        self._met = self._intervals = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            record = info.get("record")
            if record is None:
                continue
            self._intervals += 1
            self._met += sli_status(record.snapshot, self.slis).all_ok
        return True

    def _on_rollout_end(self) -> None:
        if not self._intervals:
            return
        attainment = self._met / self._intervals
        self.multiplier = dual_update(self.multiplier, attainment, self.target, self.lr)
        self.training_env.env_method("set_lagrange_multiplier", self.multiplier)
        self.history.append((self.num_timesteps, attainment, self.multiplier))
        self.logger.record("lagrange/attainment", attainment)
        self.logger.record("lagrange/multiplier", self.multiplier)

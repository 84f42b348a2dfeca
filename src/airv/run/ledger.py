"""The run's ledger: what each task has spent and what it is owed, against its cap.

Spent is engine seconds (each request's share of batch time) and tokens (prompt + completion),
resumed work included. Owed is the estimated tokens of work queued or in flight, per test input
and augmentation. A task is capped when spent (plus, for planning, owed at the run's measured
seconds per token) reaches --task-cap.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from airv.core.types import TaskId, Unit


class Ledger:
    def __init__(self, cap_seconds: float | None, cap_tokens: int | None):
        self.cap_seconds = cap_seconds
        self.cap_tokens = cap_tokens
        self._spent: dict[TaskId, tuple[float, int]] = {}
        self._owed: dict[Unit, dict[str, int]] = defaultdict(dict)  # aug key -> tokens
        self._owed_tokens: Counter[TaskId] = Counter()
        self.cut: set[TaskId] = set()  # tasks stopped at their cap

    def charge(self, task_id: TaskId, seconds: float, tokens: int) -> None:
        s, t = self._spent.get(task_id, (0.0, 0))
        self._spent[task_id] = (s + seconds, t + tokens)

    def spent(self, task_id: TaskId) -> tuple[float, int]:
        """Engine seconds and tokens a task has spent."""
        return self._spent.get(task_id, (0.0, 0))

    def owe(self, unit: Unit, key: str, tokens: int) -> None:
        self._owed[unit][key] = tokens
        self._owed_tokens[unit[0]] += tokens

    def settle(self, unit: Unit, key: str) -> None:
        """Work done, dropped or refused: no longer owed."""
        tokens = self._owed[unit].pop(key, None)
        if tokens is not None:
            self._owed_tokens[unit[0]] -= tokens

    def owed(self, unit: Unit) -> set[str]:
        """The augmentations of a test input queued or in flight."""
        return set(self._owed[unit])

    def capped(self, task_id: TaskId, seconds_per_token: float | None = None) -> bool:
        """Whether a task has reached its cap on what it spent; with `seconds_per_token`, its
        owed work counts too (priced at that rate): nothing more is planned for it."""
        seconds, tokens = self.spent(task_id)
        if seconds_per_token is not None:
            tokens += self._owed_tokens[task_id]
            seconds += self._owed_tokens[task_id] * seconds_per_token
        cap_s, cap_t = self.cap_seconds, self.cap_tokens
        return (cap_s is not None and seconds >= cap_s) or (cap_t is not None and tokens >= cap_t)

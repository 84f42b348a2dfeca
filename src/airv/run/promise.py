"""A task's promise, for the gain schedule's first round: how well the model follows the task's
own demonstrations. Each task's last train output is scored given one demonstration, the pair
before it (one prefill-only request a task, on the base model, no view generated): its
log-likelihood `loglik`, and the promise 1 / (1 - loglik), 1 for an output the model is sure of
and towards 0 for one it finds unlikely. The gain schedule orders its first round by price over
promise (airv.run.schedule.best): a task the model cannot follow goes after those it can, at
equal price.

One demonstration, not all the others: on the replayed schedule bench (bench/schedule-replay.md
and bench/schedule-replay-15-seeds.md, 25 recordings) the log-likelihood told the test inputs
some recorded view answers right from those none does with an AUC of 0.98, against 0.94 given
every other pair, and the pass cost 0.29 to 0.37 of each test input's first view, against 0.53
to 0.63. Cheaper, it is asked at tighter budgets: gain - uniform over the 25 seeds went from -3
to +15 test outputs at 15% of the work and from 0 to +7 at 20%, no seed behind at 20% (the
README's *Measured*). A task with a single train pair, or whose scoring prompt does not fit the
context, has no promise (the schedule counts it as 1).

The pass is paid up front, so it runs only where it is cheap beside the time left: a sample
goes first (the promises of tasks spread over the sizes, `sample`), which measures what
scoring costs a token here, and the rest is asked if its tokens at that rate are at most
PROMISE_SHARE of the time left, else never (`worth_scoring`). Replayed on the schedule bench
(bench/schedule-notes.md), the pass given every other pair and asked whatever it cost lost 51
and 55 test outputs over 10 seeds (two sets of recordings) at a budget of 10% of the work,
where it was about a quarter of the budget, and gained 4 at 20%.

The values are appended to promise.jsonl in the run folder ({"task_id", "loglik", "seconds",
"tokens"}; loglik null: no promise), so a resumed run does not score a task twice and
`airv replay` reads them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from airv.core.jsonio import append_jsonl, read_jsonl
from airv.core.prompts import PromptTooLong
from airv.core.tasks import Task
from airv.core.types import TaskId
from airv.engines.base import ScoreRequest
from airv.run.rescore import AnswerIds, FitPrompt


def demonstration(task: Task, fit: FitPrompt, answer_ids: AnswerIds) -> ScoreRequest | None:
    """The request that scores the task's last train output given the pair before it (None
    with one pair, or a prompt too long for the context)."""
    if len(task.train) < 2:
        return None
    before, last = task.train[-2:]
    fitted = fit(Task(task.id, (before,), (last.input,)), 0)
    if isinstance(fitted, PromptTooLong):
        return None
    return ScoreRequest(tuple(fitted.token_ids), tuple(answer_ids(last.output)))


# The most of the time left that the pass may cost, at the rate its sample measured.
PROMISE_SHARE = 0.1


def sample(tokens: Mapping[TaskId, int], inflight: int) -> list[TaskId]:
    """The tasks whose promises go first, to measure the pass's rate: an eighth of the prompts
    in flight (at least one), spread over the tasks by size (in order of tokens, ties by task
    id, the middle task of each of that many equal slices), so that their rate is the whole
    pass's. The smallest tasks alone overstated it about 1.7 times on the schedule bench (a
    request's fixed cost weighs more in a small one), which refused passes that cost 6% of the
    time left."""
    order = sorted(tokens, key=lambda t: (tokens[t], t))
    k = min(len(order), max(1, inflight // 8))
    return [order[(2 * i + 1) * len(order) // (2 * k)] for i in range(k)]


def worth_scoring(tokens: int, measured: Iterable[Scored], left: float) -> bool | None:
    """Whether scoring `tokens` more is cheap enough beside `left` seconds, at the rate of the
    promises already `measured` (None: none measured yet)."""
    scored = [s for s in measured if s.tokens > 0 and s.seconds > 0]
    if not scored:
        return None
    rate = sum(s.seconds for s in scored) / sum(s.tokens for s in scored)
    return tokens * rate <= PROMISE_SHARE * left


class PromisePass:
    """The pass's rule, one decision a run: a sample first; once it is in, the rest if at the
    sample's rate it is cheap beside the time left (`worth_scoring`), else nothing more. A run
    (airv.run.feed), a replay and a simulation ask it what to score next."""

    def __init__(self, inflight: int):
        self.inflight = inflight
        # The rest asked (True) or refused (False); None: not decided yet.
        self.verdict: bool | None = None

    @property
    def known(self) -> bool:
        """Whether promises order the first round: only once the whole pass was asked (a
        sample's promises against the others' unknown would push the sampled tasks back)."""
        return self.verdict is True

    def wants(self, waiting: bool) -> bool:
        """Whether `ask` may ask anything: not once the rest was refused, nor while the sample
        is `waiting` (asked, not in). A caller checks this before it builds what is owed."""
        return not (self.verdict is False or (self.verdict is None and waiting))

    def ask(
        self, owed: Mapping[TaskId, int], measured: Iterable[Scored], left: float, waiting: bool
    ) -> list[TaskId]:
        """Of the tasks whose promises are `owed` (task: its request's tokens), those to ask
        now, given the promises `measured` so far, `left` seconds and whether promises are
        still `waiting` (asked, not in): the sample, then the rest or none. With none owed and
        none waiting every promise is known (a resumed run)."""
        if not self.wants(waiting):
            return []
        if not owed:
            if not waiting:
                self.verdict = True
            return []
        if self.verdict is None:
            verdict = worth_scoring(sum(owed.values()), measured, left)
            if verdict is None:  # nothing measured: the sample first
                return sample(owed, self.inflight)
            self.verdict = verdict
        return list(owed) if self.verdict else []


def weight(loglik: float) -> float:
    """A log-likelihood's promise: 1 / (1 - loglik), in (0, 1]."""
    return 1.0 / (1.0 - min(loglik, 0.0))


@dataclass(frozen=True, slots=True)
class Promise:
    """One owed promise: the task's demonstration request."""

    task_id: TaskId
    request: ScoreRequest


@dataclass(frozen=True, slots=True)
class Scored:
    """A task's promise as promise.jsonl keeps it."""

    loglik: float | None  # None: the task has no promise
    seconds: float  # engine seconds of its request
    tokens: int = 0  # of its request


def read_promises(path: Path) -> dict[TaskId, Scored]:
    """promise.jsonl per task (the last line of a task wins); damaged lines are skipped."""
    records, _ = read_jsonl(path, _record)
    return dict(records)


def _record(d: Any) -> tuple[TaskId, Scored]:
    loglik = d["loglik"]
    return str(d["task_id"]), Scored(
        None if loglik is None else float(loglik),
        float(d.get("seconds", 0.0)),
        int(d.get("tokens", 0)),
    )


def append_promises(path: Path, scored: Iterable[tuple[TaskId, Scored]]) -> None:
    append_jsonl(
        path,
        (
            orjson.dumps(
                {
                    "task_id": t,
                    "loglik": s.loglik,
                    "seconds": round(s.seconds, 6),
                    "tokens": s.tokens,
                }
            )
            for t, s in scored
        ),
    )


class Promises:
    """The run's promises: read back from promise.jsonl, owed for the other tasks, recorded
    as the engine returns them."""

    def __init__(
        self, path: Path, tasks: Mapping[TaskId, Task], fit: FitPrompt, answer_ids: AnswerIds
    ):
        self.path = path
        self.tasks = tasks
        self._fit, self._answer_ids = fit, answer_ids
        self.scored: dict[TaskId, Scored] = read_promises(path)

    def of(self, task_id: TaskId) -> float | None:
        """The task's promise, once scored and if it has one."""
        s = self.scored.get(task_id)
        return None if s is None or s.loglik is None else weight(s.loglik)

    def owed(self, task_ids: Iterable[TaskId], asked: set[TaskId]) -> list[Promise]:
        """Requests for the tasks not yet scored nor `asked`; a task that has no promise is
        recorded as such here."""
        out: list[Promise] = []
        none: list[tuple[TaskId, Scored]] = []
        for t in task_ids:
            if t in self.scored or t in asked:
                continue
            try:
                request = demonstration(self.tasks[t], self._fit, self._answer_ids)
            except Exception:  # a task whose prompts cannot be built fails with its views
                request = None
            if request is None:
                none.append((t, Scored(None, 0.0)))
            else:
                out.append(Promise(t, request))
        self._keep(none)
        return out

    def record(self, p: Promise, loglik: float | None, seconds: float) -> None:
        self._keep([(p.task_id, Scored(loglik, seconds, p.request.tokens))])

    def _keep(self, scored: list[tuple[TaskId, Scored]]) -> None:
        if scored:
            self.scored.update(scored)
            append_promises(self.path, scored)

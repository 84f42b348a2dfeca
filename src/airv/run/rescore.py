"""Likelihood re-scoring: rank a test input's candidates by log p(candidate | augmented prompt).

For each test input, the top M distinct candidates by votes are scored under J augmentations:
the task and the candidate are augmented together and the engine returns the candidate's summed
log-probability from prompt logprobs: prefill only, no generation. The run sends all scoring
requests of a round to the engine in one call (per worker) and hands the values back here;
they are appended to scores.jsonl, so a resumed run and `airv vote --mode rescore` reuse them.

The re-scorer gets what it needs as arguments: the run's config, its tasks, and a way to fit
a prompt. It never sees the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from airv.core.augment import Augmentation, Stream, plan_views
from airv.core.prompts import FittedPrompt, PromptTooLong
from airv.core.tasks import Task
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Candidate, Vote
from airv.engines.base import ScoreRequest
from airv.run.config import RunConfig
from airv.run.scores import Scores, append_scores, attach_scores, read_scores

# (augmented task, test index) -> its fitted prompt; and grid -> the token ids of its answer.
FitPrompt = Callable[[Task, int], FittedPrompt | PromptTooLong]
AnswerIds = Callable[[Grid], list[int]]


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """One owed score: a candidate grid of a test input under one augmentation."""

    unit: Unit
    grid: Grid
    aug: str
    request: ScoreRequest

    @property
    def cost(self) -> int:
        return self.request.tokens


class Rescorer:
    def __init__(
        self,
        cfg: RunConfig,
        tasks: Mapping[TaskId, Task],
        fit_prompt: FitPrompt,
        answer_ids: AnswerIds,
    ):
        self.cfg = cfg
        self.tasks = tasks
        self._fit = fit_prompt
        self._answer_ids = answer_ids
        self.scores: Scores = read_scores(cfg.scores_path)
        self._augs: dict[Unit, list[Augmentation]] = {}
        self._prompts: dict[tuple[Unit, str], FittedPrompt | None] = {}
        self._changed: set[Unit] = set(self.scores)  # whose votes must be recounted

    def take_changed(self) -> set[Unit]:
        """Test inputs with new scores since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def augmentations(self, unit: Unit) -> list[Augmentation]:
        """The J augmentations a test input's candidates are scored under: fixed per test input
        (its own seed stream, apart from generation's), so every candidate gets the same ones."""
        if unit not in self._augs:
            task_id, test_index = unit
            self._augs[unit] = plan_views(
                self.tasks[task_id],
                test_index,
                self.cfg.rescore_augmentations,
                self.cfg.views,
                stream=Stream.RESCORE,
            )
        return self._augs[unit]

    def attach(self, unit: Unit, cands: Sequence[Candidate]) -> list[Candidate]:
        return attach_scores(self.scores.get(unit, {}), cands)

    def _prompt(self, unit: Unit, aug: Augmentation) -> FittedPrompt | None:
        key = (unit, aug.key)
        if key not in self._prompts:
            fitted = self._fit(aug.apply_task(self.tasks[unit[0]]), unit[1])
            self._prompts[key] = fitted if isinstance(fitted, FittedPrompt) else None
        return self._prompts[key]

    def pending(self, votes: Mapping[Unit, Vote]) -> list[ScoreItem]:
        """Scoring requests still owed: top-M grids per test input x its J augmentations."""
        cfg = self.cfg
        items: list[ScoreItem] = []
        for unit, v in votes.items():
            have = self.scores.get(unit, {})
            for t in v.tallies[: cfg.rescore_top]:
                for aug in self.augmentations(unit):
                    if aug.key in have.get(t.grid, {}):
                        continue
                    prompt = self._prompt(unit, aug)
                    if prompt is None:
                        continue
                    cont = self._answer_ids(aug.apply_grid(t.grid))
                    if len(prompt.token_ids) + len(cont) > cfg.engine.max_model_len:
                        continue
                    req = ScoreRequest(tuple(prompt.token_ids), tuple(cont))
                    items.append(ScoreItem(unit, t.grid, aug.key, req))
        return items

    def record(self, items: Sequence[ScoreItem], values: Sequence[float]) -> None:
        """Keep the engine's scores for `items` and append them to scores.jsonl."""
        for item, value in zip(items, values, strict=True):
            self.scores.setdefault(item.unit, {}).setdefault(item.grid, {})[item.aug] = value
            self._changed.add(item.unit)
        append_scores(
            self.cfg.scores_path,
            ((i.unit, i.grid, i.aug, v) for i, v in zip(items, values, strict=True)),
        )

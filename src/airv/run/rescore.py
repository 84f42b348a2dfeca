"""Likelihood re-scoring: rank a test input's candidates by log p(candidate | augmented prompt).

For each test input, the top M distinct candidates by votes are scored under J augmentations:
the task and the candidate are augmented together and the engine returns the candidate's summed
log-probability from prompt logprobs — prefill only, no generation. All scoring requests of a
round go to the engine in one call (per worker). Scores are appended to scores.jsonl, so a
resumed run and `airv vote --mode rescore` reuse them.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from airv.core.augment import Augmentation, plan_augmentations
from airv.core.prompts import FittedPrompt, answer_text, fit_prompt
from airv.core.types import Grid, Unit, to_grid, to_lists
from airv.core.voting import Candidate, Vote
from airv.engines.base import ScoreRequest

if TYPE_CHECKING:
    from airv.run.pipeline import Run

# Per test input: grid -> {augmentation key: log p(grid under that augmentation)}.
Scores = dict[Unit, dict[Grid, dict[str, float]]]


@dataclass(frozen=True, slots=True)
class _Item:
    unit: Unit
    grid: Grid
    aug: str
    request: ScoreRequest


def read_scores(path: Path) -> Scores:
    """scores.jsonl -> Scores; damaged lines (a crash mid-write) are skipped."""
    out: Scores = defaultdict(dict)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out
    for line in raw.splitlines():
        try:
            d = orjson.loads(line)
            unit = (str(d["task_id"]), int(d["test_index"]))
            out[unit].setdefault(to_grid(d["grid"]), {})[str(d["aug"])] = float(d["score"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out


def attach_scores(
    unit_scores: dict[Grid, dict[str, float]], cands: Sequence[Candidate]
) -> list[Candidate]:
    """Candidates carrying their grid's scores under the augmentations that every scored grid
    of this test input shares, so that totals compare like with like; grids not scored at all
    stay unscored."""
    present = {c.grid for c in cands}
    scored = [keys for g, keys in unit_scores.items() if g in present and keys]
    common = sorted(set.intersection(*(set(k) for k in scored))) if scored else []
    out = []
    for c in cands:
        have = unit_scores.get(c.grid)
        if common and have:
            c = replace(c, scores=tuple(have[k] for k in common))
        out.append(c)
    return out


class Rescorer:
    def __init__(self, run: Run):
        self.run = run
        self.scores: Scores = read_scores(run.cfg.scores_path)
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
            cfg = self.run.cfg
            rng = np.random.default_rng([cfg.seed, zlib.crc32(task_id.encode()), test_index, 1])
            self._augs[unit] = plan_augmentations(
                self.run.challenges.tasks[task_id],
                cfg.rescore_augmentations,
                rng,
                keep_background=cfg.keep_background,
                permute_colours=cfg.permute_colours,
                shuffle_train=cfg.shuffle_train,
            )
        return self._augs[unit]

    def attach(self, unit: Unit, cands: list[Candidate]) -> list[Candidate]:
        return attach_scores(self.scores.get(unit, {}), cands)

    def _prompt(self, unit: Unit, aug: Augmentation) -> FittedPrompt | None:
        key = (unit, aug.key)
        if key not in self._prompts:
            cfg = self.run.cfg
            task = aug.apply_task(self.run.challenges.tasks[unit[0]])
            fitted = fit_prompt(
                task,
                unit[1],
                cfg.format,
                cfg.template,
                self.run.tokenizer,
                cfg.engine.max_model_len,
            )
            self._prompts[key] = fitted if isinstance(fitted, FittedPrompt) else None
        return self._prompts[key]

    def pending(self, votes: dict[Unit, Vote]) -> list[_Item]:
        """Scoring requests still owed: top-M grids per test input x its J augmentations."""
        cfg = self.run.cfg
        tok = self.run.tokenizer
        items: list[_Item] = []
        for unit, v in votes.items():
            have = self.scores.get(unit, {})
            for t in v.tallies[: cfg.rescore_top]:
                for aug in self.augmentations(unit):
                    if aug.key in have.get(t.grid, {}):
                        continue
                    prompt = self._prompt(unit, aug)
                    if prompt is None:
                        continue
                    text = answer_text(aug.apply_grid(t.grid), cfg.format)
                    cont = [*tok.encode(text, add_special_tokens=False), tok.eos_token_id]
                    if len(prompt.token_ids) + len(cont) > cfg.engine.max_model_len:
                        continue
                    req = ScoreRequest(tuple(prompt.token_ids), tuple(cont))
                    items.append(_Item(unit, t.grid, aug.key, req))
        return items

    def run_scoring(self, votes: dict[Unit, Vote]) -> bool:
        """Score what is owed in one engine call per worker; True if anything was scored."""
        from airv.run.pipeline import share_out

        items = self.pending(votes)
        if not items:
            return False
        run = self.run
        t0 = time.monotonic()
        shares = share_out(
            items,
            len(run.workers),
            lambda i: i.unit[0],
            lambda i: len(i.request.prompt_ids) + len(i.request.continuation_ids),
        )
        for w, share in zip(run.workers, shares, strict=True):
            if share:
                w.submit("score", [i.request for i in share])
        lines = []
        for w, share in zip(run.workers, shares, strict=True):
            if not share:
                continue
            values: list[float] = w.result(run.clock.deadline)
            for item, value in zip(share, values, strict=True):
                self.scores.setdefault(item.unit, {}).setdefault(item.grid, {})[item.aug] = value
                self._changed.add(item.unit)
                lines.append(
                    orjson.dumps(
                        {
                            "task_id": item.unit[0],
                            "test_index": item.unit[1],
                            "grid": to_lists(item.grid),
                            "aug": item.aug,
                            "score": value,
                        }
                    )
                )
        with open(run.cfg.scores_path, "ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        run.summary.scoring_requests += len(items)
        run.summary.scoring_seconds += time.monotonic() - t0
        return True

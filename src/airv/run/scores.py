"""The scores log (scores.jsonl): each re-scored candidate's log-probability under one
augmentation, a JSON line per score, appended as results arrive.

Like the predictions log it is the run's memory: a resumed run, `airv vote`, `airv eval` and
`airv report` read it back, so every likelihood-based voting mode can be redone offline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from airv.core.jsonio import append_jsonl, read_jsonl
from airv.core.types import Grid, Unit, to_grid, to_lists
from airv.core.voting import Candidate

# Per test input: grid -> {augmentation key: log p(grid under that augmentation)}.
Scores = dict[Unit, dict[Grid, dict[str, float]]]


def read_scores(path: Path) -> Scores:
    """scores.jsonl -> Scores; damaged lines (a crash mid-write) are skipped."""
    out: Scores = defaultdict(dict)
    records, _ = read_jsonl(path, _score_record)
    for unit, grid, aug, score in records:
        out[unit].setdefault(grid, {})[aug] = score
    return out


def _score_record(d: Any) -> tuple[Unit, Grid, str, float]:
    unit = (str(d["task_id"]), int(d["test_index"]))
    return unit, to_grid(d["grid"]), str(d["aug"]), float(d["score"])


def append_scores(path: Path, scored: Iterable[tuple[Unit, Grid, str, float]]) -> None:
    """Append (test input, grid, augmentation key, score) records and fsync."""
    append_jsonl(
        path,
        (
            orjson.dumps(
                {
                    "task_id": unit[0],
                    "test_index": unit[1],
                    "grid": to_lists(grid),
                    "aug": aug,
                    "score": score,
                }
            )
            for unit, grid, aug, score in scored
        ),
    )


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

"""`airv eval`: how good a run is, against known solutions, and how much the vote loses.

Four metrics per test output, then averaged over all test outputs (and per task):

- accuracy: the guess equals the truth;
- correct_pixels: the share of equal cells when the shape is right, else 0;
- correct_size: the shape is right;
- unanswered: no valid grid was produced for the test input (nothing parsed or nothing ran;
  the submission holds the `[[0]]` fallback there). Such an output scores 0 on the other
  three: the fallback is no answer of the model's, even where its shape happens to fit.

They are reported for three sources: attempt_1, the better of the two attempts (per test
output, the one with the higher (accuracy, correct_pixels)) and the pool oracle (any
candidate of the log right; the best correct_pixels and correct_size among candidates).
The gap between best-of-2 and the oracle is what the selection step loses against the model.
The cell-wise vote can build a grid no candidate had, so its attempts can beat the oracle.

Everything is computed from the predictions log, so every voting mode can be compared on the
same candidates without running the model again.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from airv.core.errors import ConfigError, InputError
from airv.core.tasks import load_challenges, load_solutions
from airv.core.types import Grid, TaskId, Unit, shape
from airv.core.voting import DEFAULT_VOTE_MODE, SELECTORS, Candidate, VoteMode, vote
from airv.run import options as runopts
from airv.run.predictions import read_logged_candidates

EVAL_FILE = "eval.json"


class Source(enum.StrEnum):
    """Where the guess being scored comes from."""

    ATTEMPT_1 = "attempt_1"
    BEST_OF_2 = "best_of_2"
    ORACLE = "oracle"


_LABELS = {
    Source.ATTEMPT_1: "attempt_1",
    Source.BEST_OF_2: "best of 2",
    Source.ORACLE: "pool oracle",
}


@dataclass(frozen=True, slots=True)
class Match:
    """One guess (or the best of several) against the truth."""

    exact: bool
    pixels: float  # share of equal cells if the shape is right, else 0
    size: bool

    @property
    def rank(self) -> tuple[bool, float]:
        return (self.exact, self.pixels)


NO_MATCH = Match(exact=False, pixels=0.0, size=False)


def match(guess: Grid, truth: Grid) -> Match:
    if shape(guess) != shape(truth):
        return NO_MATCH
    cells = sum(len(row) for row in truth)
    equal = sum(
        a == b
        for g_row, t_row in zip(guess, truth, strict=True)
        for a, b in zip(g_row, t_row, strict=True)
    )
    return Match(exact=equal == cells, pixels=equal / cells, size=True)


def pool_match(pool: Sequence[Grid], truth: Grid) -> Match:
    """The oracle over candidates: each component at its best over the pool (the best pixels
    and the right size may come from different candidates)."""
    matches = [match(g, truth) for g in set(pool)]
    if not matches:
        return NO_MATCH
    return Match(
        exact=any(m.exact for m in matches),
        pixels=max(m.pixels for m in matches),
        size=any(m.size for m in matches),
    )


@dataclass(frozen=True, slots=True)
class OutputResult:
    """One test output scored from every source."""

    task_id: TaskId
    test_index: int
    answered: bool
    n_candidates: int
    matches: Mapping[Source, Match]


@dataclass(frozen=True, slots=True)
class Metrics:
    """The four metrics averaged over `n` test outputs (all 0 when n is 0)."""

    accuracy: float
    correct_pixels: float
    correct_size: float
    unanswered: float
    n: int

    @classmethod
    def mean(cls, results: Sequence[OutputResult], source: Source) -> Metrics:
        n = len(results)
        if n == 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0)
        ms = [r.matches[source] for r in results]
        return cls(
            accuracy=sum(m.exact for m in ms) / n,
            correct_pixels=sum(m.pixels for m in ms) / n,
            correct_size=sum(m.size for m in ms) / n,
            unanswered=sum(not r.answered for r in results) / n,
            n=n,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "correct_pixels": self.correct_pixels,
            "correct_size": self.correct_size,
            "unanswered": self.unanswered,
            "n": self.n,
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every test output of the solutions, scored under one voting mode."""

    mode: VoteMode
    outputs: tuple[OutputResult, ...]

    def overall(self) -> dict[Source, Metrics]:
        return {s: Metrics.mean(self.outputs, s) for s in Source}

    def per_task(self) -> dict[TaskId, dict[Source, Metrics]]:
        by_task: dict[TaskId, list[OutputResult]] = {}
        for r in self.outputs:
            by_task.setdefault(r.task_id, []).append(r)
        return {t: {s: Metrics.mean(rs, s) for s in Source} for t, rs in by_task.items()}


def evaluate_candidates(
    pools: Mapping[Unit, Sequence[Candidate]],
    solutions: Mapping[TaskId, Sequence[Grid]],
    mode: VoteMode = DEFAULT_VOTE_MODE,
) -> Evaluation:
    """Score every test output of `solutions` (in their order) from the candidates of `pools`.

    A test output without candidates is unanswered and scores NO_MATCH from every source.
    """
    outputs = []
    for task_id, truths in solutions.items():
        for i, truth in enumerate(truths):
            cands = pools.get((task_id, i), ())
            v = vote(cands, mode)
            m1, m2 = (
                (NO_MATCH, NO_MATCH)
                if v is None
                else (
                    match(v.attempt_1, truth),
                    match(v.attempt_2, truth),
                )
            )
            outputs.append(
                OutputResult(
                    task_id=task_id,
                    test_index=i,
                    answered=v is not None,
                    n_candidates=len(cands),
                    matches={
                        Source.ATTEMPT_1: m1,
                        Source.BEST_OF_2: m2 if m2.rank > m1.rank else m1,
                        Source.ORACLE: pool_match([c.grid for c in cands], truth),
                    },
                )
            )
    return Evaluation(mode=mode, outputs=tuple(outputs))


def compare_modes(
    pools: Mapping[Unit, Sequence[Candidate]],
    solutions: Mapping[TaskId, Sequence[Grid]],
    modes: Sequence[VoteMode] = tuple(SELECTORS),
) -> dict[VoteMode, Evaluation]:
    """One evaluation per voting mode of `modes`, all on the same candidates."""
    return {m: evaluate_candidates(pools, solutions, m) for m in modes}


@dataclass(frozen=True, slots=True)
class EvalReport:
    """What `airv eval` prints and writes."""

    predictions_path: Path
    solutions_path: Path
    mode: VoteMode  # the headline mode: per-task results are under it
    modes: Mapping[VoteMode, Evaluation]
    # Modes that could not be evaluated, and why (a likelihood mode without scores.jsonl).
    not_evaluated: Mapping[VoteMode, str]
    n_predictions: int
    n_rejected: int  # completions that did not parse to a grid
    damaged_lines: int
    ignored_inputs: int  # test inputs in the log with no known solution

    @property
    def headline(self) -> Evaluation:
        return self.modes[self.mode]

    def to_json(self) -> dict[str, object]:
        head = self.headline
        return {
            "predictions": str(self.predictions_path),
            "solutions": str(self.solutions_path),
            "mode": self.mode.value,
            "tasks": len({r.task_id for r in head.outputs}),
            "test_outputs": len(head.outputs),
            "predictions_read": self.n_predictions,
            "rejected": self.n_rejected,
            "damaged_lines": self.damaged_lines,
            "ignored_test_inputs": self.ignored_inputs,
            "overall": {s.value: m.to_json() for s, m in head.overall().items()},
            "modes": {
                mode.value: {
                    s.value: m.to_json()
                    for s, m in ev.overall().items()
                    if s is not Source.ORACLE  # the oracle does not depend on the mode
                }
                for mode, ev in self.modes.items()
            },
            "modes_not_evaluated": {m.value: why for m, why in self.not_evaluated.items()},
            "per_task": {
                t: {s.value: m.to_json() for s, m in ms.items()}
                for t, ms in head.per_task().items()
            },
        }

    def write(self, path: Path) -> None:
        try:
            path.write_bytes(orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2))
        except OSError as e:
            raise InputError(f"cannot write the evaluation: {e.strerror or e}", path=path) from e


def evaluate_log(
    predictions: Path,
    solutions: Path,
    *,
    challenges: Path | None = None,
    mode: VoteMode = DEFAULT_VOTE_MODE,
) -> EvalReport:
    """Evaluate a predictions log against a solution file, under every voting mode.

    With `challenges`, only the tasks of that file are scored (a solution file often covers
    more tasks than one run did); every one of them must have a solution.
    """
    logged = read_logged_candidates(predictions)
    truths = load_solutions(solutions)
    if challenges is not None:
        ids = load_challenges(challenges, strict=False).task_ids
        missing = [t for t in ids if t not in truths]
        if missing:
            raise InputError(
                f"no solution for {len(missing)} task(s) of the challenge file",
                path=solutions,
                task_id=missing[0],
            )
        truths = {t: truths[t] for t in ids}
    pools: dict[Unit, list[Candidate]] = {}
    ignored: set[Unit] = set()
    for unit, cands in logged.pools.items():
        task_id, test_index = unit
        if task_id not in truths or not 0 <= test_index < len(truths[task_id]):
            ignored.add(unit)
        else:
            pools[unit] = cands
    # A likelihood mode without the run's scores would vote as the grid mode does: say so
    # rather than show grid numbers under its name.
    why = f"no {logged.scores_path.name} beside the log (a run with --vote MODE writes it)"
    not_evaluated = {m: why for m in SELECTORS if m.needs_scores and not logged.has_scores}
    if mode in not_evaluated:
        raise InputError(f"--vote {mode.value}: {why}", path=logged.scores_path)
    evaluable = [m for m in SELECTORS if m not in not_evaluated]
    return EvalReport(
        predictions_path=predictions,
        solutions_path=solutions,
        mode=mode,
        modes=compare_modes(pools, truths, evaluable),
        not_evaluated=not_evaluated,
        n_predictions=len(logged.records),
        n_rejected=sum(p.grid is None for p in logged.records),
        damaged_lines=logged.damaged_lines,
        ignored_inputs=len(ignored),
    )


_METRICS = ("accuracy", "correct_pixels", "correct_size", "unanswered")


def _row(label: str, m: Metrics, width: int) -> str:
    values = (m.accuracy, m.correct_pixels, m.correct_size, m.unanswered)
    return f"{label:<{width}}" + "".join(f"{v:>16.4f}" for v in values)


def _header(title: str, width: int) -> str:
    return f"{title:<{width}}" + "".join(f"{name:>16}" for name in _METRICS)


def render(report: EvalReport, *, per_task: bool = False) -> str:
    """The tables `airv eval` prints: the headline mode's three sources, then mode x metric,
    then (optionally) one line per task."""
    head = report.headline
    n_tasks = len({r.task_id for r in head.outputs})
    lines = [
        f"{report.predictions_path}: {n_tasks} tasks, {len(head.outputs)} test outputs, "
        f"{report.n_predictions} predictions ({report.n_rejected} rejected)"
        + (f", {report.damaged_lines} damaged lines skipped" if report.damaged_lines else "")
        + (
            f", {report.ignored_inputs} test inputs without a solution ignored"
            if report.ignored_inputs
            else ""
        ),
        "",
    ]
    width = 24
    lines.append(_header(f"{report.mode.value} vote", width))
    for s, m in head.overall().items():
        lines.append(_row(_LABELS[s], m, width))
    lines += ["", _header("by voting mode", width)]
    for mode in SELECTORS:
        for s in (Source.ATTEMPT_1, Source.BEST_OF_2):
            label = f"{mode.value}: {_LABELS[s]}"
            if mode in report.modes:
                lines.append(_row(label, report.modes[mode].overall()[s], width))
            else:
                lines.append(f"{label:<{width}}  not evaluated: {report.not_evaluated[mode]}")
    if per_task:
        lines += ["", "per task (accuracy / correct_pixels)"]
        lines.append(f"{'task':<12}{'outputs':>8}" + "".join(f"{_LABELS[s]:>20}" for s in Source))
        for task_id, ms in head.per_task().items():
            cells = "".join(
                f"{f'{ms[s].accuracy:.2f} / {ms[s].correct_pixels:.2f}':>20}" for s in Source
            )
            lines.append(f"{task_id:<12}{ms[Source.ATTEMPT_1].n:>8}{cells}")
    return "\n".join(lines)


HELP = "score a run against known solutions: accuracy, pixels, size, pool oracle"
DESCRIPTION = (
    "Evaluate against a solution file (e.g. the public evaluation set) before spending a Kaggle "
    "submission. Per test output: accuracy (exact match), correct_pixels (share of cells right "
    "when the shape is right), correct_size (shape right) and unanswered (no valid grid "
    "produced); averaged over all test outputs and per task, for attempt_1, the better of the "
    "two attempts, and the pool oracle (a correct answer anywhere among the candidates: the gap "
    "to best-of-2 is what voting loses). Every voting mode is run over the same candidates for "
    "comparison.\n\n"
    "Either evaluate an existing log:  airv eval --predictions LOG --solutions FILE\n"
    "or run the pipeline first:        airv eval --challenges FILE --solutions FILE "
    "--model DIR --out DIR [run options]\n"
    "Writes eval.json beside the log (or --out FILE with --predictions)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # the description's own line breaks
    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--solutions",
        type=Path,
        required=True,
        metavar="FILE",
        help="the solution file, {task_id: [grid, ...]}",
    )
    ev.add_argument(
        "--predictions",
        type=Path,
        metavar="LOG",
        help="evaluate this predictions.jsonl without running a model (then --challenges, if "
        "given, limits the scoring to its tasks; --vote picks the headline mode)",
    )
    ev.add_argument(
        "--per-task",
        action="store_true",
        help="also print one line per task (eval.json always has them)",
    )
    runopts.add_run_arguments(
        p,
        required=False,
        out_help="with --model: the run's output directory (eval.json goes there); with "
        "--predictions: the JSON file to write (default: eval.json beside the log)",
    )


def main(args: argparse.Namespace) -> int:
    if args.model is not None:
        if args.predictions is not None:
            raise ConfigError("give --model (run, then evaluate) or --predictions, not both")
        if args.challenges is None or args.out is None:
            raise ConfigError("--model needs --challenges FILE and --out DIR (the run directory)")
        from airv.run.pipeline import run  # on demand: it would slow every `airv --help`

        runopts.configure_logging(args.log_level)
        cfg = runopts.build_run_config(args)
        code = run(cfg)
        log_path, out, mode, challenges = (
            cfg.log_path,
            cfg.out_dir / EVAL_FILE,
            cfg.vote_mode,
            cfg.challenges,
        )
    elif args.predictions is not None:
        code = 0
        log_path, challenges = args.predictions, args.challenges
        out = args.out if args.out is not None else log_path.parent / EVAL_FILE
        mode = DEFAULT_VOTE_MODE if args.vote is None else VoteMode(args.vote)
    else:
        raise ConfigError("give --predictions LOG (evaluate a run) or --model DIR (run, evaluate)")
    report = evaluate_log(log_path, args.solutions, challenges=challenges, mode=mode)
    report.write(out)
    print(render(report, per_task=args.per_task))
    print(f"written: {out}")
    return code


__all__ = [
    "DESCRIPTION",
    "EVAL_FILE",
    "HELP",
    "EvalReport",
    "Evaluation",
    "Match",
    "Metrics",
    "OutputResult",
    "Source",
    "add_arguments",
    "compare_modes",
    "evaluate_candidates",
    "evaluate_log",
    "main",
    "match",
    "pool_match",
    "render",
]

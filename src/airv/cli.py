"""The `airv` command line: one function per subcommand registers its parser and handler.

`main` is the one place that turns an AirvError into `airv: error: ...` on stderr and the
error's exit code. To add a subcommand, write `_add_<name>(subparsers)` and list it in
`_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import orjson

from airv import __version__
from airv.core.errors import AirvError, InputError, report
from airv.core.submission import load_submission, score_submission, validate_submission
from airv.core.tasks import load_challenges, load_solutions

# A string: argparse only makes _SubParsersAction subscriptable at type-check time.
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _validate(args: argparse.Namespace) -> int:
    # Lenient load: a task the challenge file itself gets wrong still needs a submission entry.
    challenges = load_challenges(args.challenges, strict=False)
    problems = validate_submission(args.submission, challenges)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.submission}: INVALID, {len(problems)} problem(s)")
        return 1
    n_outputs = sum(challenges.n_tests.values())
    print(f"{args.submission}: OK, {len(challenges.task_ids)} tasks, {n_outputs} test outputs")
    return 0


def _add_validate(subparsers: _Subparsers) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check a submission.json against its challenge file",
        description="Check that SUBMISSION has exactly the tasks and test entries of the "
        "challenge file, both attempts each, and valid grids. Prints every problem; exits 0 "
        "if valid, 1 if not.",
    )
    p.add_argument(
        "submission", metavar="SUBMISSION", type=Path, help="the submission.json to check"
    )
    p.add_argument(
        "--challenges",
        required=True,
        type=Path,
        metavar="FILE",
        help="the Kaggle challenge file the submission answers (e.g. arc-agi_test_challenges.json)",
    )
    p.set_defaults(func=_validate)


def _score(args: argparse.Namespace) -> int:
    submission = load_submission(args.submission)
    solutions = load_solutions(args.solutions)
    score = score_submission(submission, solutions)
    print(f"kaggle score: {score.kaggle:.4f} ({score.n_correct}/{score.n_outputs} test outputs)")
    print(f"task average: {score.task_average:.4f} (over {len(score.per_task)} tasks)")
    if args.out is not None:
        try:
            args.out.write_bytes(orjson.dumps(score.to_json(), option=orjson.OPT_INDENT_2))
        except OSError as e:
            raise InputError(
                f"cannot write per-task results: {e.strerror or e}", path=args.out
            ) from e
    return 0


def _add_score(subparsers: _Subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score a submission.json against known solutions",
        description="Score SUBMISSION against a solution file. Prints the Kaggle score (correct "
        "test outputs / all test outputs, a test output being correct if either attempt matches "
        "exactly) and the task average (mean over tasks of each task's fraction correct). Tasks "
        "missing from the submission count as wrong.",
    )
    p.add_argument(
        "submission", metavar="SUBMISSION", type=Path, help="the submission.json to score"
    )
    p.add_argument(
        "--solutions",
        required=True,
        type=Path,
        metavar="FILE",
        help="the solution file, {task_id: [grid, ...]} (e.g. arc-agi_evaluation_solutions.json)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        default=None,
        help="also write the scores and each task's per-test-output results to FILE as JSON",
    )
    p.set_defaults(func=_score)


def _add_run(subparsers: _Subparsers) -> None:
    from airv.run import options as runopts

    p = subparsers.add_parser(
        "run",
        help="run the pipeline: challenge file + model -> submission.json",
        description=runopts.RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runopts.add_run_arguments(p)
    p.set_defaults(func=runopts.run_command)


def _add_vote(subparsers: _Subparsers) -> None:
    from airv.tools import vote

    p = subparsers.add_parser(
        "vote",
        help="redo the voting offline from a predictions log",
        description="Recompute the votes from a predictions log (predictions.jsonl of a run) "
        "with another voting mode, and write a new submission.json. No model is needed.",
    )
    vote.add_vote_arguments(p)
    p.set_defaults(func=vote.vote_command)


def _report(args: argparse.Namespace) -> int:
    from airv.core.voting import DEFAULT_VOTE_MODE, VoteMode
    from airv.tools.report import write_report

    mode = DEFAULT_VOTE_MODE if args.mode is None else VoteMode(args.mode)
    written = write_report(
        args.out_dir,
        out=args.out,
        challenges=args.challenges,
        solutions=args.solutions,
        mode=mode,
    )
    print(f"{written.path}: {written.tasks} tasks; {written.solutions_note}")
    return 0


def _add_report(subparsers: _Subparsers) -> None:
    from airv.core.voting import DEFAULT_VOTE_MODE, VoteMode

    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write one static HTML file (no network needed to view it) about the run in "
        "OUT_DIR: per task the train pairs, test inputs, both attempts and the top candidates "
        "with their votes and logprobs, the truth and whether it was solved where solutions "
        "are known; filters and sorting; charts of time and tokens per task, rejected outputs "
        "by reason and accuracy per round. Reads OUT_DIR/submission.json, predictions.jsonl "
        "and run_summary.json.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="the output directory of a run")
    p.add_argument(
        "--challenges",
        type=Path,
        metavar="FILE",
        default=None,
        help="the challenge file (default: the one run_summary.json records)",
    )
    p.add_argument(
        "--solutions",
        type=Path,
        metavar="FILE",
        default=None,
        help="the solution file (default: *_solutions.json beside *_challenges.json, if there)",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in VoteMode],
        default=None,
        help="voting mode for the candidates shown and accuracy per round "
        f"(default {DEFAULT_VOTE_MODE.value})",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        default=None,
        help="where to write the page (default OUT_DIR/report.html)",
    )
    p.set_defaults(func=_report)


def _eval(args: argparse.Namespace) -> int:
    from airv.core.errors import ConfigError
    from airv.core.voting import DEFAULT_VOTE_MODE, VoteMode
    from airv.run import options as runopts
    from airv.run.pipeline import run
    from airv.tools.evaluate import EVAL_FILE, evaluate_log, render

    if args.model is not None:
        if args.predictions is not None:
            raise ConfigError("give --model (run, then evaluate) or --predictions, not both")
        if args.challenges is None or args.out is None:
            raise ConfigError("--model needs --challenges FILE and --out DIR (the run directory)")
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


def _add_eval(subparsers: _Subparsers) -> None:
    from airv.run import options as runopts

    p = subparsers.add_parser(
        "eval",
        help="score a run against known solutions: accuracy, pixels, size, pool oracle",
        description="Evaluate against a solution file (e.g. the public evaluation set) before "
        "spending a Kaggle submission. Per test output: accuracy (exact match), "
        "correct_pixels (share of cells right when the shape is right), correct_size (shape "
        "right) and unanswered (no valid grid produced); averaged over all test outputs and "
        "per task, for attempt_1, the better of the two attempts, and the pool oracle (a "
        "correct answer anywhere among the candidates: the gap to best-of-2 is what voting "
        "loses). Every voting mode is run over the same candidates for comparison.\n\n"
        "Either evaluate an existing log:  airv eval --predictions LOG --solutions FILE\n"
        "or run the pipeline first:        airv eval --challenges FILE --solutions FILE "
        "--model DIR --out DIR [run options]\n"
        "Writes eval.json beside the log (or --out FILE with --predictions).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.set_defaults(func=_eval)


def _plan(args: argparse.Namespace) -> int:
    from airv.core.errors import ConfigError
    from airv.run import options as runopts
    from airv.tools.plan import make_plan

    if args.challenges is None or args.model is None:
        raise ConfigError("airv plan needs --challenges FILE and --model DIR")
    runopts.configure_logging(args.log_level)
    # The run's own config, so that the plan prices the prompts the run will send.
    cfg = runopts.build_run_config(
        argparse.Namespace(**{**vars(args), "out": args.out or Path(".")})
    )
    plan = make_plan(
        cfg,
        calibration_tasks=args.calibration_tasks,
        augmentations=args.calibration_augmentations,
    )
    print(plan.render())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "plan.json"
        try:
            path.write_bytes(orjson.dumps(plan.to_json(), option=orjson.OPT_INDENT_2))
        except OSError as e:
            raise InputError(f"cannot write the plan: {e.strerror or e}", path=path) from e
        print(f"written: {path}")
    return 0


def _add_plan(subparsers: _Subparsers) -> None:
    from airv.run import options as runopts
    from airv.tools import plan

    p = subparsers.add_parser(
        "plan",
        help="measure the engine, predict how many augmentations fit in the time budget",
        description="Size a run before spending it. Starts the engine of --model (with the "
        "same engine, sampling and format options as `airv run`), measures prompt (prefill) "
        "and answer (decode) tokens/s on a few calibration tasks, prices every test input of "
        "--challenges, and prints how many augmentations per test input fit in --time-budget "
        "after the reserve and the measured start-up, and which tasks cannot fit "
        "--max-model-len at all. Run it in an interactive session on the machine of the real "
        "run (e.g. a Kaggle GPU notebook), then pass --max-augmentations to `airv run`.",
    )
    c = p.add_argument_group("calibration")
    c.add_argument(
        "--calibration-tasks",
        type=int,
        default=plan.CALIBRATION_TASKS,
        metavar="N",
        help="tasks to measure on, spread over short and long prompts "
        f"(default {plan.CALIBRATION_TASKS})",
    )
    c.add_argument(
        "--calibration-augmentations",
        type=int,
        default=plan.CALIBRATION_AUGMENTATIONS,
        metavar="K",
        help="views per test input in each of the two timed calls; more prompts = a batch "
        f"closer to the run's (default {plan.CALIBRATION_AUGMENTATIONS})",
    )
    runopts.add_run_arguments(
        p,
        required=False,
        out_help="also write plan.json into this directory",
        groups=[g for g in runopts.RUN_GROUPS if g is not runopts.Group.VOTING],
    )
    p.set_defaults(func=_plan)


def _add_prompt(subparsers: _Subparsers) -> None:
    from airv.tools import prompt

    p = subparsers.add_parser(
        "prompt",
        help="print the exact prompt (or answer) text airv sends a model for one task",
        description=prompt.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prompt.add_prompt_arguments(p)
    p.set_defaults(func=prompt.prompt_command)


def _add_recipe(subparsers: _Subparsers) -> None:
    from airv.tools import recipe

    p = subparsers.add_parser(
        "recipe",
        help="list the winners' recipes, or print one as `airv run` options",
        description=recipe.__doc__,
    )
    recipe.add_recipe_arguments(p)
    p.set_defaults(func=recipe.recipe_command)


_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_run,
    _add_recipe,
    _add_prompt,
    _add_vote,
    _add_validate,
    _add_score,
    _add_report,
    _add_eval,
    _add_plan,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airv",
        description="airv: augment, infer, reverse, vote — an offline Kaggle submission "
        "package for LLM-based ARC-AGI solvers.",
    )
    parser.add_argument("--version", action="version", version=f"airv {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse usage errors exit 2 itself)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except AirvError as e:
        return report(e)
    return code

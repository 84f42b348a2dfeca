#!/usr/bin/env python3
"""airv's Kaggle kernel: install the offline wheels if needed, find the inputs, run, exit cleanly.

Kaggle runs this file as a script kernel. `make kernel` copies it into build/kernel/ with the
settings of kaggle-config.json written into CONFIG below; `make submit-local` runs it as it is
against a local stand-in for /kaggle (`--root`).

A notebook that ends with an error scores nothing, even with a good submission.json on disk.
So before anything else this script writes a schema-valid fallback submission.json from the
challenge file (standard library only: airv may not even be installable), and every later
step (install, discovery, the run) runs inside one guard that catches everything, SIGTERM at
Kaggle's time limit included, prints the traceback and makes sure a valid submission is in
place: the run's latest, else the fallback.

Exit status: on Kaggle, 0 whenever a valid submission.json is in place. Elsewhere (a dry run
such as `make submit-local`) non-zero when the run itself failed, so a failure is never hidden.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# --- airv-config: rewritten by `make kernel` from kaggle-config.json ---
CONFIG: dict[str, object] = json.loads(r"""{}""")
# --- end airv-config ---


# Tasks in quick mode (an interactive session on the public placeholder file), unless
# kaggle-config.json's quick_tasks says otherwise.
QUICK_TASKS = 5
# The same searches as airv.kaggle.paths (which cannot be imported before airv is installed):
# breadth-first, sorted, symlinked folders skipped, at most this deep. tests/test_kaggle.py
# checks that the two agree.
MAX_DEPTH = 7
CHALLENGE_NAME = "arc-agi_test_challenges.json"
# airv.core.tasks.MAX_GUESSED_TESTS: test inputs counted for a task that cannot be read.
MAX_GUESSED_TESTS = 10
# Adapters (test-time fine-tuning) go here, not to /kaggle/working (about 20 GB, and the
# submission's own disk).
SCRATCH = "/tmp/airv-scratch"
# Set before anything imports transformers or vLLM: the notebook has no internet.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def _walk(top: Path, max_depth: int = MAX_DEPTH):  # type: ignore[no-untyped-def]
    level = [top]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            yield d
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink()))
            except OSError:
                continue
        level = nxt


def _find_wheel_dir(input_dir: Path, max_depth: int = MAX_DEPTH) -> Path | None:
    """The attached folder that holds airv's wheel (airv itself is not importable yet)."""
    for d in _walk(input_dir, max_depth):
        if any(d.glob("airv-*.whl")):
            return d
    return None


def _find_challenges(input_dir: Path) -> Path | None:
    """The competition's test challenge file: arc-agi_test_challenges.json, else the one file
    named *test_challenges.json; None when there is none, or several."""
    loose: list[Path] = []
    for d in _walk(input_dir):
        if (d / CHALLENGE_NAME).is_file():
            return d / CHALLENGE_NAME
        loose.extend(sorted(d.glob("*test_challenges.json")))
    return loose[0] if len(loose) == 1 else None


# -- the fallback submission, with the standard library only -----------------------------


def expected_tests(challenges: Path) -> dict[str, int] | None:
    """Task id -> test inputs, as the submission must hold them; None if unreadable."""
    try:
        data = json.loads(challenges.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    out = {}
    for task_id, task in data.items():
        test = task.get("test") if isinstance(task, dict) else None
        n = sum(isinstance(t, dict) and "input" in t for t in test) if isinstance(test, list) else 1
        out[task_id] = min(max(n, 1), MAX_GUESSED_TESTS)
    return out


def _is_grid(g: object) -> bool:
    return (
        isinstance(g, list)
        and 1 <= len(g) <= 30
        and all(isinstance(r, list) and len(r) == len(g[0]) for r in g)
        and 1 <= len(g[0]) <= 30
        and all(type(c) is int and 0 <= c <= 9 for r in g for c in r)
    )


def is_valid_submission(path: Path, expected: dict[str, int]) -> bool:
    """Every task of the challenge file, one entry per test input, both attempts, grids."""
    try:
        sub = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(sub, dict) or set(sub) != set(expected):
        return False
    for task_id, n in expected.items():
        entries = sub[task_id]
        if not isinstance(entries, list) or len(entries) != n:
            return False
        for e in entries:
            if not isinstance(e, dict) or not all(
                _is_grid(e.get(k)) for k in ("attempt_1", "attempt_2")
            ):
                return False
    return True


def write_fallback(path: Path, expected: dict[str, int]) -> None:
    """[[0]] for every attempt, written atomically: a submission Kaggle scores (as zero)."""
    blank = {"attempt_1": [[0]], "attempt_2": [[0]]}
    data = json.dumps({t: [blank] * n for t, n in expected.items()}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".submission.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_submission(path: Path, expected: dict[str, int] | None) -> bool:
    """Whether a valid submission is in place, writing the fallback where it is not."""
    if expected is None:
        return False
    if is_valid_submission(path, expected):
        return True
    try:
        write_fallback(path, expected)
    except OSError as exc:  # a full disk: nothing more can be done
        print(f"airv kernel: cannot write the fallback submission: {exc}", file=sys.stderr)
        return False
    return True


def on_kaggle() -> bool:
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"))


def ensure_installed(root: Path, need_vllm: bool, need_peft: bool = False) -> None:
    """pip-install airv (and vLLM, and peft for test-time fine-tuning) from the attached wheel
    folder, offline, if missing."""
    wanted = ["airv"] + (["vllm"] if need_vllm else []) + (["peft"] if need_peft else [])
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if not missing:
        return
    wheels = _find_wheel_dir(root / "input")
    if wheels is None:
        raise SystemExit(
            f"airv kernel: {', '.join(missing)} not installed and no wheel folder (one holding "
            f"airv-*.whl) under {root / 'input'}: attach the wheels dataset (see wheels/README.md)"
        )
    print(f"airv kernel: installing {', '.join(missing)} from {wheels}", flush=True)
    subprocess.check_call(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            *missing,
        ]
    )


def run_option(options: dict[str, object], run_args: list[str], name: str) -> object:
    """An `airv run` option as the run will see it: the config's run options, overridden by
    `--name X` or `--name=X` among the extra arguments; None when neither gives it."""
    value = options.get(name)
    for i, arg in enumerate(run_args):
        if arg == f"--{name}" and i + 1 < len(run_args):
            value = run_args[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def wants_ttt(options: dict[str, object], run_args: list[str]) -> bool:
    """Whether the options themselves turn fine-tuning on (`ttt`, not "off")."""
    return run_option(options, run_args, "ttt") not in (None, False, "off")


def _needs_peft(options: dict[str, object], run_args: list[str], model: Path) -> bool:
    """Whether the run fine-tunes, its recipe included (airv is installed by now): the
    options' own `ttt`, else the recipe's (`recipe`, else the model's airv.json)."""
    if run_option(options, run_args, "ttt") is not None:
        return wants_ttt(options, run_args)
    from airv.run.recipes import load_recipe, model_recipe

    name = run_option(options, run_args, "recipe") or model_recipe(model)[0]
    return name is not None and load_recipe(str(name)).options.get("ttt") not in (None, "off")


def _stop(signum: int, frame: object) -> None:
    """SIGTERM outside the run (while installing or discovering): end as Ctrl-C would, so the
    guard still puts a valid submission in place. During the run, the run's own handler
    stops it as its deadline would."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("AIRV_KAGGLE_ROOT", "/kaggle")),
        help="the /kaggle tree (input/ and working/); default /kaggle or $AIRV_KAGGLE_ROOT",
    )
    parser.add_argument("--challenges", type=Path, help="challenge file (default: discovered)")
    parser.add_argument("--model", type=Path, help="model directory (default: discovered)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help=f"only a few tasks (CONFIG quick_tasks, default {QUICK_TASKS}); the default in an "
        "interactive Kaggle session on the public placeholder file",
    )
    mode.add_argument("--full", action="store_true", help="all tasks, even interactively")
    parser.add_argument(
        "run_args", nargs="*", help="extra `airv run` options, after --, e.g. -- --time-budget 20m"
    )
    args = parser.parse_args(argv)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)

    # First of all, with nothing that can fail to import: a valid submission on disk.
    submission = args.root / "working" / "submission.json"
    challenges = (
        args.challenges or _config_path("challenges") or _find_challenges(args.root / "input")
    )
    expected = None if challenges is None else expected_tests(challenges)
    ensure_submission(submission, expected)

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = _run(args)
    except BaseException:  # SystemExit and KeyboardInterrupt too: the notebook must not end here
        traceback.print_exc()
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the final check is not to be cut
        valid = ensure_submission(submission, expected)
    if valid and on_kaggle():
        if code != 0:
            print(f"airv kernel: the run failed (status {code}); a valid submission stands")
        return 0
    if not valid:
        print("airv kernel: no valid submission.json could be written", file=sys.stderr)
        return 1
    return code


def _run(args: argparse.Namespace) -> int:
    """Install, discover, run, validate: the steps the guard in `main` protects."""
    run_options = dict(CONFIG.get("run", {}))  # type: ignore[call-overload]
    need_vllm = run_option(run_options, args.run_args, "engine") in (None, "vllm")
    ensure_installed(args.root, need_vllm, wants_ttt(run_options, args.run_args))

    from airv.cli import main as airv
    from airv.kaggle import paths as kaggle
    from airv.run.recipes import run_flags

    inputs = kaggle.discover(
        args.root,
        challenges=args.challenges or _config_path("challenges"),
        model=args.model or _config_path("model"),
    )
    if _needs_peft(run_options, args.run_args, inputs.model):  # a recipe's TTT included
        ensure_installed(args.root, need_vllm, need_peft=True)
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"airv kernel: challenges {inputs.challenges}\nairv kernel: model {inputs.model}")

    quick = args.quick or (
        not args.full and kaggle.is_interactive_kaggle() and not kaggle.is_hidden_rerun()
    )
    if quick:
        run_options["max-tasks"] = CONFIG.get("quick_tasks", QUICK_TASKS)
        print(f"airv kernel: quick mode, {run_options['max-tasks']} tasks (--full for all)")
    if on_kaggle():
        run_options.setdefault("scratch", SCRATCH)

    argv_run = [
        "run",
        "--challenges",
        str(inputs.challenges),
        "--model",
        str(inputs.model),
        "--out",
        str(inputs.out_dir),
        *run_flags(run_options),
        *args.run_args,
    ]
    code = airv(argv_run)
    if code != 0:
        print(f"airv kernel: run ended with status {code}; checking what it left", flush=True)
    if not inputs.submission.exists():
        print("airv kernel: no submission.json was written", file=sys.stderr)
        return 1
    valid = airv(["validate", str(inputs.submission), "--challenges", str(inputs.challenges)])
    return code if valid == 0 else 1


def _config_path(key: str) -> Path | None:
    value = CONFIG.get(key)
    return Path(str(value)) if value else None


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: at exit Python joins every child process still alive, and one the run
    # failed to end would hold the notebook past its limit with a good submission on disk.
    os._exit(status)

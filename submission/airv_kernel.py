#!/usr/bin/env python3
"""airv's Kaggle kernel: install the offline wheels if needed, find the inputs, run, exit cleanly.

Kaggle runs this file as a script kernel. `make kernel` copies it into build/kernel/ with the
settings of kaggle-config.json written into CONFIG below; `make submit-local` runs it as it is
against a local stand-in for /kaggle (`--root`).

Exit status: 0 whenever a valid submission.json was written (a failed engine still leaves one,
and Kaggle should score it), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

# --- airv-config: rewritten by `make kernel` from kaggle-config.json ---
CONFIG: dict[str, object] = json.loads(r"""{}""")
# --- end airv-config ---


# Tasks in quick mode (an interactive session on the public placeholder file), unless
# kaggle-config.json's quick_tasks says otherwise.
QUICK_TASKS = 5
# The same search as airv.kaggle.paths (which cannot be imported before airv is installed):
# breadth-first, sorted, symlinked folders skipped, at most this deep. tests/test_kaggle.py
# checks that the two agree.
MAX_DEPTH = 7


def _find_wheel_dir(input_dir: Path, max_depth: int = MAX_DEPTH) -> Path | None:
    """The attached folder that holds airv's wheel (airv itself is not importable yet)."""
    level = [input_dir]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            if any(d.glob("airv-*.whl")):
                return d
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink()))
            except OSError:
                continue
        level = nxt
    return None


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


def run_flags(options: dict[str, object]) -> list[str]:
    """{"time-budget": "11h30m", "enforce-eager": true} -> ["--time-budget", "11h30m", ...]."""
    flags: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flags.append(f"--{key}")
        if value is not True:
            flags.append(str(value))
    return flags


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

    run_options = dict(CONFIG.get("run", {}))  # type: ignore[call-overload]
    need_vllm = run_options.get("engine", "vllm") == "vllm"
    need_peft = run_options.get("ttt", "off") != "off" or "--ttt" in args.run_args
    ensure_installed(args.root, need_vllm, need_peft)

    from airv.cli import main as airv
    from airv.kaggle import paths as kaggle

    inputs = kaggle.discover(
        args.root,
        challenges=args.challenges or _config_path("challenges"),
        model=args.model or _config_path("model"),
    )
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"airv kernel: challenges {inputs.challenges}\nairv kernel: model {inputs.model}")

    quick = args.quick or (
        not args.full and kaggle.is_interactive_kaggle() and not kaggle.is_hidden_rerun()
    )
    if quick:
        run_options["max-tasks"] = CONFIG.get("quick_tasks", QUICK_TASKS)
        print(f"airv kernel: quick mode, {run_options['max-tasks']} tasks (--full for all)")

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
    return (
        0
        if airv(["validate", str(inputs.submission), "--challenges", str(inputs.challenges)]) == 0
        else 1
    )


def _config_path(key: str) -> Path | None:
    value = CONFIG.get(key)
    return Path(str(value)) if value else None


if __name__ == "__main__":
    sys.exit(main())

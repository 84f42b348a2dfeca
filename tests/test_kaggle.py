"""Kaggle packaging: input discovery, the kernel build, the entry script end to end, wheels."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from airv.core.errors import ConfigError, InputError
from airv.core.submission import validate_submission
from airv.core.tasks import Pair, Task, dump_challenges, load_challenges
from airv.kaggle import kernel as kernel_build
from airv.kaggle import paths as kaggle

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "submission" / "airv_kernel.py"


def _task(i: int) -> Task:
    g = ((i % 10, 1), (2, 3))
    return Task(f"t{i:07d}", train=(Pair(g, g),), test=(g,))


def _fake_model(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "qwen2"}')
    (d / "model.safetensors").write_bytes(b"")
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.mark.parametrize(
    ("challenge_dir", "model_dir"),
    [
        ("input/arc-prize-2024", "input/my-model"),
        ("input/competitions/arc-prize-2025", "input/datasets/someone/my-model"),
        ("input/competitions/arc-prize-2025", "input/models/someone/arc/transformers/default/3"),
    ],
)
def test_discovers_every_mount_layout(tmp_path: Path, challenge_dir: str, model_dir: str) -> None:
    (tmp_path / challenge_dir).mkdir(parents=True)
    dump_challenges([_task(1)], tmp_path / challenge_dir / "arc-agi_test_challenges.json")
    # Decoys that must not be mistaken for the inputs.
    dump_challenges([_task(2)], tmp_path / challenge_dir / "arc-agi_evaluation_challenges.json")
    (tmp_path / "input/other/config.json").parent.mkdir(parents=True)
    (tmp_path / "input/other/config.json").write_text('{"model_type": "qwen2"}')  # no weights
    model = _fake_model(tmp_path / model_dir)
    wheels = tmp_path / "input/datasets/someone/airv-wheels"
    wheels.mkdir(parents=True)
    (wheels / "airv-0.1.0-py3-none-any.whl").write_bytes(b"")

    found = kaggle.discover(tmp_path)
    assert found.challenges == tmp_path / challenge_dir / "arc-agi_test_challenges.json"
    assert found.model == model
    assert found.wheels == wheels
    assert found.submission == tmp_path / "working" / "submission.json"


def test_discovery_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    with pytest.raises(InputError, match=r"arc-agi_test_challenges\.json"):
        kaggle.discover(tmp_path)
    dump_challenges([_task(1)], tmp_path / "input" / "arc-agi_test_challenges.json")
    with pytest.raises(InputError, match="no model found"):
        kaggle.discover(tmp_path)
    _fake_model(tmp_path / "input/a")
    _fake_model(tmp_path / "input/b")
    with pytest.raises(InputError, match="several models"):
        kaggle.discover(tmp_path)
    # An explicit model settles it.
    assert kaggle.discover(tmp_path, model=tmp_path / "input/b").model == tmp_path / "input/b"


def _kaggle_config(tmp_path: Path, **overrides: object) -> Path:
    cfg = json.loads((REPO / "kaggle-config.example.json").read_text())
    cfg.update(username="alice", **overrides)
    path = tmp_path / "kaggle-config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_kernel_build_fills_metadata_and_embeds_config(tmp_path: Path) -> None:
    out = kernel_build.build(
        _kaggle_config(tmp_path, model_source="alice/arc/transformers/v1/2"), tmp_path / "kernel"
    )
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False
    assert meta["id"] == "alice/airv-arc-submission"
    assert meta["code_file"] == "airv_kernel.py"
    assert meta["dataset_sources"] == ["alice/airv-wheels", "alice/your-merged-arc-model"]
    assert meta["competition_sources"] == ["arc-prize-2025"]
    assert meta["model_sources"] == ["alice/arc/transformers/v1/2"]
    script = (out / "airv_kernel.py").read_text()
    m = re.search(r'CONFIG: dict\[str, object\] = json\.loads\(r"""(.*?)"""\)', script, re.S)
    assert m is not None
    assert json.loads(m.group(1))["run"]["time-budget"] == "11h30m"
    compile(script, "airv_kernel.py", "exec")  # still a valid script


def test_kernel_build_rejects_placeholders_and_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text((REPO / "kaggle-config.example.json").read_text())
    with pytest.raises(ConfigError, match="YOUR-KAGGLE-USERNAME"):
        kernel_build.load_config(bad)
    with pytest.raises(ConfigError, match="unknown keys"):
        kernel_build.load_config(_kaggle_config(tmp_path, modle_dataset="x"))


def _local_tree(root: Path, model: Path, n_tasks: int) -> Path:
    comp = root / "input/competitions/arc-prize-2025"
    comp.mkdir(parents=True)
    dump_challenges([_task(i) for i in range(n_tasks)], comp / "arc-agi_test_challenges.json")
    shutil.copytree(model, root / "input/datasets/someone/model")
    return comp / "arc-agi_test_challenges.json"


def _run_entry(
    root: Path, env_extra: dict[str, str], *run_args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(env_extra)
    return subprocess.run(
        [
            sys.executable,
            str(ENTRY),
            "--root",
            str(root),
            "--",
            "--engine",
            "hf",
            "--no-progress",
            "--first-round",
            "2",
            "--max-augmentations",
            "2",
            *run_args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.engine
def test_entry_script_end_to_end_quick_then_full(tmp_path: Path, bigram_model: Path) -> None:
    root = tmp_path / "kaggle"
    challenges = _local_tree(root, bigram_model, n_tasks=7)

    quick = _run_entry(root, {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"})
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert "quick mode, 5 tasks" in quick.stdout
    summary = orjson.loads((root / "working/run_summary.json").read_bytes())
    assert summary["skipped_tasks"] == 2
    assert len(summary["per_task"]) == 5
    ch = load_challenges(challenges, strict=True)
    assert validate_submission(root / "working/submission.json", ch) == []

    shutil.rmtree(root / "working")
    full = _run_entry(root, {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "1"})
    assert full.returncode == 0, full.stderr[-3000:]
    summary = orjson.loads((root / "working/run_summary.json").read_bytes())
    assert summary["skipped_tasks"] == 0
    assert summary["answered_test_inputs"] == 7
    assert validate_submission(root / "working/submission.json", ch) == []


def test_entry_script_without_model_fails_clearly(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    (root / "input/c").mkdir(parents=True)
    dump_challenges([_task(1)], root / "input/c/arc-agi_test_challenges.json")
    proc = _run_entry(root, {})
    assert proc.returncode != 0
    assert "no model found" in proc.stderr


@pytest.mark.slow
def test_wheelhouse_installs_offline_into_a_fresh_venv(tmp_path: Path) -> None:
    house = tmp_path / "wheelhouse"
    subprocess.run(
        [
            "make",
            "-C",
            str(REPO),
            "wheels",
            "WHEEL_SET=core",
            f"WHEELS_DIR={house}",
            f"WHEEL_PY={sys.executable}",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert list(house.glob("airv-*.whl"))
    assert (house / "dataset-metadata.json").exists()
    venv = tmp_path / "venv"
    # The fresh venv must see nothing of this one (PYTHONPATH would make airv look installed).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    install = subprocess.run(
        [str(venv / "bin/pip"), "install", "--no-index", "--find-links", str(house), "airv"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert "Successfully installed" in install.stdout, install.stdout[-2000:]
    ch = tmp_path / "ch.json"
    dump_challenges([_task(1)], ch)
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"t0000001": [{"attempt_1": [[0]], "attempt_2": [[1]]}]}))
    proc = subprocess.run(
        [str(venv / "bin/airv"), "validate", str(sub), "--challenges", str(ch)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK, 1 tasks" in proc.stdout


def _entry_module() -> Any:
    """The kernel entry script as a module (it cannot import airv before installing it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("airv_kernel_entry", ENTRY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, wheel_dirs: list[str], links: dict[str, str] | None = None) -> Path:
    inp = root / "input"
    inp.mkdir(parents=True)
    for d in wheel_dirs:
        (inp / d).mkdir(parents=True, exist_ok=True)
        (inp / d / "airv-0.1.0-py3-none-any.whl").write_bytes(b"")
    for name, target in (links or {}).items():
        (inp / name).symlink_to(inp / target)
    return inp


@pytest.mark.parametrize(
    ("wheel_dirs", "links"),
    [
        (["datasets/me/wheels"], None),
        (["a/b/c/d/e/f/g"], None),  # depth 7: found by both
        (["a/b/c/d/e/f/g/h"], None),  # depth 8: found by neither
        (["z/wheels", "a/wheels"], None),  # two: the same one (sorted, breadth-first)
        (["deep/x/y/wheels", "top"], None),
        ([], {"link": "real"}),  # nothing at all
    ],
)
def test_the_kernels_wheel_search_agrees_with_airvs(
    tmp_path: Path, wheel_dirs: list[str], links: dict[str, str] | None
) -> None:
    if links:
        (tmp_path / "input" / "real" / "w").mkdir(parents=True)
        (tmp_path / "input" / "real" / "w" / "airv-0.1.0-py3-none-any.whl").write_bytes(b"")
        inp = tmp_path / "input"
        for name, target in links.items():
            (inp / name).symlink_to(inp / target)
    else:
        inp = _tree(tmp_path, wheel_dirs)
    entry = _entry_module()
    assert entry.MAX_DEPTH == kaggle.MAX_DEPTH
    assert entry._find_wheel_dir(inp) == kaggle.find_wheels(inp)


def test_a_symlinked_folder_is_not_searched(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "airv-0.1.0-py3-none-any.whl").write_bytes(b"")
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "link").symlink_to(outside)
    assert _entry_module()._find_wheel_dir(inp) is None
    assert kaggle.find_wheels(inp) is None

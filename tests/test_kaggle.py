"""Kaggle packaging: input discovery, the kernel build, the entry script end to end, wheels."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
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
@pytest.mark.usefixtures("vllm_processes")
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


# -- the kernel's safety net: a fault matrix through the entry script ------------------------

KAGGLE_BATCH = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_IS_COMPETITION_RERUN": "1"}

# Faults injected into the kernel's own process at start-up (sitecustomize runs before the
# entry script), as they would happen in a real run.
_INJECT = {
    "run-raises": (
        "import airv.run.pipeline as p\n"
        "def boom(self):\n"
        "    raise RuntimeError('injected: an unexpected bug')\n"
        "p.Run._execute = boom\n"
    ),
    "disk-full": (
        "import errno, airv.core.jsonio as j\n"
        "def full(path, data):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "j.write_atomic = full\n"
    ),
}


def _fault_tree(root: Path, model: Path | None) -> Path:
    comp = root / "input/competitions/arc-prize-2025"
    comp.mkdir(parents=True)
    path = comp / "arc-agi_test_challenges.json"
    dump_challenges([_task(i) for i in range(3)], path)
    data = json.loads(path.read_text())
    data["t0000001"]["test"].append({"input": [[1]]})  # two test inputs
    data["broken"] = {"train": "nonsense", "test": [{"input": [[1]]}] * 3}
    path.write_text(json.dumps(data))
    if model is not None:
        shutil.copytree(model, root / "input/datasets/someone/model")
    return path


def _entry(
    root: Path, env_extra: dict[str, str], *run_args: str, python: str = sys.executable
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(env_extra)
    return subprocess.Popen(
        [python, str(ENTRY), "--root", str(root), "--", "--engine", "hf", "--no-progress",
         *run_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _assert_valid(root: Path, challenges: Path) -> dict[str, Any]:
    ch = load_challenges(challenges, strict=False)
    sub = root / "working" / "submission.json"
    assert validate_submission(sub, ch) == []
    return json.loads(sub.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "fault", ["pip-fails", "no-model", "run-raises", "disk-full", "bad-option"]
)
def test_the_kernel_leaves_a_valid_submission_whatever_fails(
    tmp_path: Path, fault: str, tiny_model: Path
) -> None:
    """Each fault a real Kaggle run meets: the kernel prints what happened, leaves a valid,
    complete submission.json (the fallback's [[0]] where nothing better exists) and, on
    Kaggle, exits 0 (a notebook that ends with an error scores nothing)."""
    root = tmp_path / "kaggle"
    challenges = _fault_tree(root, None if fault in ("no-model", "pip-fails") else tiny_model)
    env = dict(KAGGLE_BATCH)
    python = sys.executable
    run_args: tuple[str, ...] = ()
    if fault == "pip-fails":  # airv not installed, and pip cannot install it
        venv = tmp_path / "bare"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
        )
        python = str(venv / "bin" / "python")
        wheels = root / "input/datasets/someone/airv-wheels"
        wheels.mkdir(parents=True)
        (wheels / "airv-0.1.0-py3-none-any.whl").write_bytes(b"")
        env["PYTHONPATH"] = ""
    elif fault in _INJECT:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_INJECT[fault])
        env["PYTHONPATH"] = str(site)
    elif fault == "bad-option":
        run_args = ("--time-budget", "banana")
    proc = _entry(root, env, *run_args, python=python)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # What went wrong is on stderr, for the log: a traceback, or airv's own message.
    assert "Traceback" in err or "airv: error: cannot read duration 'banana'" in err
    sub = _assert_valid(root, challenges)
    assert len(sub["t0000001"]) == 2 and len(sub["broken"]) == 3
    assert not list((root / "working").glob(".submission.*"))  # no temp file left
    if fault != "bad-option":
        return
    # Off Kaggle (make submit-local), the same failure is not hidden.
    proc = _entry(root, {}, *run_args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "banana" in err


@pytest.mark.engine
@pytest.mark.usefixtures("vllm_processes")
def test_the_kernel_stopped_by_sigterm_mid_run_exits_0_with_the_runs_answers(
    tmp_path: Path, tiny_model: Path
) -> None:
    import signal

    root = tmp_path / "kaggle"
    challenges = _local_tree(root, tiny_model, n_tasks=30)
    proc = _entry(root, KAGGLE_BATCH, "--time-budget", "15m")
    try:
        log = root / "working" / "predictions.jsonl"
        deadline = time.monotonic() + 240
        while not (log.exists() and log.stat().st_size):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    _assert_valid(root, challenges)
    summary = orjson.loads((root / "working/run_summary.json").read_bytes())
    assert summary["stopped_by"] == "SIGTERM" and summary["completions"] > 0


def test_make_kernel_refuses_bad_run_options(tmp_path: Path) -> None:
    for run, match in (
        ({"time-budgt": "1h"}, "unrecognized arguments: --time-budgt"),
        ({"time-budget": "banana"}, "cannot read duration"),
        ({"vote": "loudest"}, "invalid choice"),
        ({"first-round": 9, "max-augmentations": 4}, "max_augmentations"),
        ("fast", "'run' must be an object"),
        ({"recipe": "nope"}, "unknown recipe 'nope'"),
    ):
        with pytest.raises(ConfigError, match=match):
            kernel_build.load_config(_kaggle_config(tmp_path, run=run))
    good = {"time-budget": "11h30m", "recipe": "nvarc-2025", "enforce-eager": True}
    assert kernel_build.load_config(_kaggle_config(tmp_path, run=good))["run"] == good


def test_the_kernels_own_checks() -> None:
    entry = _entry_module()
    assert entry.wants_ttt({}, ["--ttt=per-task"]) and entry.wants_ttt({}, ["--ttt", "joint"])
    assert entry.wants_ttt({"ttt": "per-task"}, []) and not entry.wants_ttt({"ttt": "off"}, [])
    assert not entry.wants_ttt({"ttt": "per-task"}, ["--ttt=off"])
    assert entry.OFFLINE_ENV["HF_HUB_OFFLINE"] == "1" and "VLLM_NO_USAGE_STATS" in entry.OFFLINE_ENV
    from airv.core.tasks import MAX_GUESSED_TESTS

    assert entry.MAX_GUESSED_TESTS == MAX_GUESSED_TESTS


@pytest.mark.parametrize(
    "files",
    [
        ["competitions/arc/arc-agi_test_challenges.json"],
        ["a/x_test_challenges.json"],
        ["a/x_test_challenges.json", "b/y_test_challenges.json"],  # two: neither finds one
        ["b/arc-agi_test_challenges.json", "a/deeper/arc-agi_test_challenges.json"],
        [],
    ],
)
def test_the_kernels_challenge_search_agrees_with_airvs(tmp_path: Path, files: list[str]) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    for f in files:
        (inp / f).parent.mkdir(parents=True, exist_ok=True)
        dump_challenges([_task(1)], inp / f)
    try:
        airvs: Path | None = kaggle.find_challenges(inp)
    except InputError:
        airvs = None
    assert _entry_module()._find_challenges(inp) == airvs


def test_the_fallback_matches_airvs_count_of_test_inputs(tmp_path: Path) -> None:
    """The kernel's stdlib fallback and airv agree on the entries a submission needs, for
    valid and broken tasks alike, so the run's file passes the kernel's check and back."""
    from airv.core.submission import build_submission

    path = tmp_path / "c.json"
    dump_challenges([_task(i) for i in range(2)], path)
    data = json.loads(path.read_text())
    data["huge"] = {"train": [], "test": [{"input": [[1]]}] * 50}
    data["junk"] = {"train": [], "test": [0, {"input": [[1]]}]}
    data["nonsense"] = 7
    path.write_text(json.dumps(data))
    entry = _entry_module()
    expected = entry.expected_tests(path)
    ch = load_challenges(path, strict=False)
    assert expected == dict(ch.n_tests)
    sub = tmp_path / "sub.json"
    entry.write_fallback(sub, expected)
    assert validate_submission(sub, ch) == [] and entry.is_valid_submission(sub, expected)
    sub.write_bytes(orjson.dumps(build_submission(ch, {})))
    assert entry.is_valid_submission(sub, expected)
    sub.write_text('{"t0000000": []}')
    assert not entry.is_valid_submission(sub, expected)


@pytest.mark.engine
def test_the_kernel_on_a_working_folder_that_fills_up(tmp_path: Path, tiny_model: Path) -> None:
    """A real full disk: /kaggle/working is a 48 KiB tmpfs, so the fallback fits but the run's
    predictions log soon cannot grow (ENOSPC). The kernel still exits 0 on Kaggle with a valid
    submission in place. Needs root to mount; skipped elsewhere."""
    root = tmp_path / "kaggle"
    challenges = _local_tree(root, tiny_model, n_tasks=20)
    working = root / "working"
    working.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(working)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        proc = _entry(root, KAGGLE_BATCH, "--time-budget", "10m", "--max-augmentations", "8")
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "No space left on device" in err
        _assert_valid(root, challenges)
    finally:
        subprocess.run(["umount", str(working)], check=False)

"""The run's child processes (engine workers, trainers) as the fork server starts them: with
torch already imported, in the parent's environment of the moment, and a new server after the
last one was ended at a deadline. (A child ending with its parent: test_boundary_start's
SIGKILL case and test_adapt's training processes.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from airv.engines.worker import child_process, end_child_server, end_group, group_members

VARIABLE = "AIRV_TEST_CHILD_ENV"


def _report(path: str) -> None:
    """In the child: what it found on arrival."""
    import tempfile

    found = {
        "value": os.environ.get(VARIABLE),
        "torch": "torch" in sys.modules,
        "tmp": tempfile.gettempdir(),
    }
    Path(path).write_bytes(orjson.dumps(found))


def _start(path: Path) -> dict[str, object]:
    proc = child_process(_report, str(path))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_child_has_torch_and_the_parents_environment_of_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server starts here under one temporary folder; the second child, started under
    another, uses that one (the server's imports had tempfile keep the first, and a vLLM
    engine started after that folder was removed waited forever)."""
    server_tmp, child_tmp = tmp_path / "server-tmp", tmp_path / "child-tmp"
    server_tmp.mkdir()
    child_tmp.mkdir()
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    end_child_server()  # a server of this test's own, started under server_tmp
    try:
        first = _start(tmp_path / "first")
        # torch was imported by the server, not the child
        assert first == {"value": None, "torch": True, "tmp": str(server_tmp)}
        monkeypatch.setenv(VARIABLE, "set after the server started")
        monkeypatch.setenv("TMPDIR", str(child_tmp))
        second = _start(tmp_path / "second")
        assert second["value"] == "set after the server started"
        assert second["tmp"] == str(child_tmp)
    finally:
        end_child_server()  # later children get a server started in the suite's environment


@pytest.mark.slow
def test_a_child_starts_right_after_the_server_was_ended(tmp_path: Path) -> None:
    """A run stopped at its deadline ends the fork server; the next run's first child, at
    once, gets a new one (it once asked the dying server, and its start failed with EOF)."""
    _start(tmp_path / "before")
    end_child_server()
    assert _start(tmp_path / "after")["torch"] is True


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polled"])
def test_a_child_is_signalled_when_its_parent_ends(
    pidfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """die_with_parent, with the kernel's pidfd and without one (a check every second): a
    stand-in parent that ends after half a second; this process gets the signal."""
    import signal
    import subprocess
    import threading

    from airv.engines.worker import die_with_parent

    if not pidfd:

        def no_pidfd(pid: int) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    got = threading.Event()
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.set())
    try:
        parent = subprocess.Popen(["sleep", "0.5"])
        die_with_parent(parent.pid, signal.SIGUSR1)
        assert not got.wait(0.2)  # not while it lives
        parent.wait()
        assert got.wait(10)
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_ending_a_group_waits_until_none_of_it_runs_and_zombies_do_not_count() -> None:
    """A group of a leader and its child, one of them stopped (a stall), is ended whole; once
    it is, only the leader's zombie is left (dead, not yet reaped by its parent, this test),
    which `os.killpg(..., 0)` still finds and `group_members` does not."""
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(group_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = group_members(leader.pid)
        assert leader.pid in members and len(members) == 2
        child = next(pid for pid in members if pid != leader.pid)
        os.kill(child, signal.SIGSTOP)
        end_group(leader.pid)
        assert group_members(leader.pid) == []
        os.killpg(leader.pid, 0)  # the unreaped leader: a zombie, still in the group
    finally:
        leader.kill()
        leader.wait()

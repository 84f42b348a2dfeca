"""The openai engine's endpoint URLs: where the API key may go, and what logs may show."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airv.core.errors import ConfigError
from airv.core.tasks import Pair, Task, dump_challenges
from airv.engines.config import Decoding
from airv.engines.openai_engine import (
    API_KEY_ENV,
    OpenAILane,
    adapter_name,
    check_endpoints,
    key_is_safe,
    redact_url,
)
from airv.run import options as runopts

DEMO = Path(__file__).parents[1] / "models" / "airv-demo"


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://api.example.com/v1", True),
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.9.9.9:8000/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://10.0.0.5:8000/v1", False),
        ("http://example.com/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
    ],
)
def test_the_key_goes_only_over_https_or_to_this_machine(url: str, safe: bool) -> None:
    assert key_is_safe(url) is safe


_part = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="@/:?#[]%\\"),
    min_size=1,
    max_size=12,
)


@given(user=_part, password=_part, port=st.integers(1, 65535), query=_part)
def test_redacted_urls_never_show_credentials(
    user: str, password: str, port: int, query: str
) -> None:
    url = f"http://{user}:PW{password}@host.example:{port}/v1?key=Q{query}"
    shown = redact_url(url)
    assert shown == f"http://host.example:{port}/v1"
    assert "PW" not in shown and "Q" not in shown


def test_a_key_for_a_plain_http_remote_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = "http://user:secret@10.1.2.3:8000/v1"
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    check_endpoints([remote], allow_insecure_key=False)  # no key: nothing to leak
    monkeypatch.setenv(API_KEY_ENV, "sk-test")
    with pytest.raises(ConfigError, match="unencrypted") as info:
        check_endpoints(["https://ok.example/v1", remote], allow_insecure_key=False)
    assert "secret" not in str(info.value) and "10.1.2.3:8000" in str(info.value)
    check_endpoints([remote], allow_insecure_key=True)
    check_endpoints(["https://ok.example/v1", "http://127.0.0.1:1/v1"], allow_insecure_key=False)
    # The lane itself withholds the key all the same.
    assert OpenAILane.key_for(remote, allow_insecure_key=False) is None
    assert OpenAILane.key_for(remote, allow_insecure_key=True) == "sk-test"
    assert OpenAILane.key_for("https://ok.example/v1", allow_insecure_key=False) == "sk-test"


def test_the_flag_reaches_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ch = tmp_path / "ch.json"
    dump_challenges([Task("a", (Pair(((1,),), ((1,),)),), (((1,),),))], ch)
    parser = argparse.ArgumentParser()
    runopts.add_run_arguments(parser)
    base = ["--challenges", str(ch), "--model", str(DEMO), "--out", str(tmp_path / "o")]
    remote = ["--engine", "openai", "--endpoint", "http://10.1.2.3:8000/v1"]
    monkeypatch.setenv(API_KEY_ENV, "sk-test")
    with pytest.raises(ConfigError, match="--allow-insecure-key"):
        runopts.build_run_config(parser.parse_args([*base, *remote]))
    cfg = runopts.build_run_config(parser.parse_args([*base, *remote, "--allow-insecure-key"]))
    assert cfg.engine.allow_insecure_key


def test_an_adapters_server_name_is_fixed_by_its_path() -> None:
    a = adapter_name("/tmp/scratch/adapters/t-abc")
    assert a == adapter_name("/tmp/scratch/adapters/t-abc")
    assert a != adapter_name("/tmp/scratch/adapters/t-abd")


def test_a_lanes_failure_message_hides_credentials() -> None:
    """An endpoint that refuses connections: the lane's failure names it without its
    credentials (the message reaches the log and run_summary.json)."""
    from airv.engines.lane import WorkerDied

    lane = OpenAILane("http://u:pw@127.0.0.1:9/v1", Decoding(), name="endpoint-0")
    try:
        with pytest.raises(WorkerDied, match=r"endpoint-0 \(http://127.0.0.1:9/v1\)") as info:
            for _ in range(60):
                lane.waitable.poll(1)
                lane.receive()
        assert "pw" not in str(info.value)
    finally:
        lane.close()


def test_a_lane_ended_while_it_starts_leaves_nothing_running() -> None:
    """A lane closed during its start's back-off (a restarted lane's wait): its start is
    cancelled, its thread ends and its event loop is closed, nothing left pending."""
    lane = OpenAILane("http://127.0.0.1:9/v1", Decoding(), name="endpoint-0", life=3)  # 7 s
    lane.close()
    assert lane.finished
    assert not lane.ready and lane.receive() == []

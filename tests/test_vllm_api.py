"""wheels/check_vllm_api.py: the vLLM names airv calls, found in a source tree by ast.

The installed vLLM (what the engine tests run) must pass; a tree with one name taken out must
fail naming it. `make vllm-api-check` runs the same check on the Kaggle pin's wheel."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

CHECKER = Path(__file__).parents[1] / "wheels" / "check_vllm_api.py"
VLLM_ENGINE = Path(__file__).parents[1] / "src" / "airv" / "engines" / "vllm_engine.py"


@pytest.fixture(scope="module")
def api() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_vllm_api", CHECKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_installed_vllm_has_every_name(api: ModuleType) -> None:
    assert api.check(api.installed_root()) == []


def test_the_engine_calls_no_llm_engine_method_the_check_leaves_out(api: ModuleType) -> None:
    """Every `self._engine.X(` and `self._llm.X(` call in the engine is in the checked API."""
    checked = {n for c in api.API for n in c.names}
    called = set(re.findall(r"self\._(?:engine|llm)\.(\w+)", VLLM_ENGINE.read_text()))
    assert called and called <= checked


@pytest.mark.parametrize(
    ("module", "old", "new", "says"),
    [
        (
            "vllm/v1/engine/llm_engine.py",
            "def abort_request(",
            "def abort_requests_renamed(",
            "LLMEngine has no abort_request",
        ),
        (
            "vllm/sampling_params.py",
            "FINAL_ONLY",
            "FINAL_ONLY_RENAMED",
            "RequestOutputKind has no FINAL_ONLY",
        ),
        ("vllm/lora/request.py", "lora_int_id", "adapter_id", "LoRARequest has no lora_int_id"),
    ],
)
def test_a_missing_name_is_reported(
    api: ModuleType, tmp_path: Path, module: str, old: str, new: str, says: str
) -> None:
    src = api.installed_root()
    for path in (src / "vllm").rglob("*.py"):  # the Python sources, as in an unpacked wheel
        rel = path.relative_to(src)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / rel)
    assert api.check(tmp_path) == []
    text = (tmp_path / module).read_text()
    assert old in text
    (tmp_path / module).write_text(text.replace(old, new))
    failures = api.check(tmp_path)
    assert any(says in f for f in failures), failures


def test_a_tree_without_vllm_is_a_usage_error(api: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        api.main(["--source", str(tmp_path)])
    assert exc.value.code == 2

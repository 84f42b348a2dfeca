"""`make kernel`: fill kernel-metadata.json and the entry script from one config file.

kaggle-config.json (copy kaggle-config.example.json) names the user's Kaggle account, the model
dataset (or Kaggle model), the wheels dataset and the run options. This writes
build/kernel/kernel-metadata.json and build/kernel/airv_kernel.py (with the config embedded),
ready for `kaggle kernels push -p build/kernel`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from airv.core.errors import AirvError, ConfigError, report
from airv.core.jsonio import read_json_object
from airv.run.recipes import run_flags

REPO = Path(__file__).resolve().parents[3]
REQUIRED = ("username", "kernel_slug", "competition", "wheels_dataset")
KNOWN = {
    *REQUIRED,
    "title",
    "model_dataset",
    "model_source",
    "is_private",
    "quick_tasks",
    "run",
    "challenges",
    "model",
}
_CONFIG_BLOCK = re.compile(
    r"(# --- airv-config.*?---\n)CONFIG: dict\[str, object\] = json\.loads\(r\"\"\".*?\"\"\"\)\n",
    re.DOTALL,
)


def check_run_options(options: object, source: Path) -> None:
    """Parse the config's run options with `airv run`'s own parser and build the run's config
    from them (on a stand-in challenge file and model), so that a typo fails here, not in a
    Kaggle run that shows no logs."""
    from airv.run.options import build_run_config, run_option_parser

    if not isinstance(options, dict):
        raise ConfigError(f"{source}: 'run' must be an object of `airv run` options")
    flags = run_flags(options)
    with tempfile.TemporaryDirectory() as tmp:
        challenges, model = Path(tmp) / "challenges.json", Path(tmp) / "model"
        challenges.write_text("{}")
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "qwen2"}')
        argv = ["run", "--challenges", str(challenges), "--model", str(model), "--out", tmp]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = run_option_parser().parse_args([*argv[1:], *flags])
        except SystemExit:
            why = stderr.getvalue().strip().splitlines()[-1:] or ["cannot parse"]
            raise ConfigError(f"{source}: run options {flags}: {why[0]}") from None
        try:
            build_run_config(args)
        except AirvError as e:
            raise ConfigError(f"{source}: run options: {e}") from None


def load_config(path: Path) -> dict[str, object]:
    cfg = read_json_object(path, "kaggle config")
    unknown = set(cfg) - KNOWN
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(KNOWN)}")
    missing = [k for k in REQUIRED if not cfg.get(k)]
    if missing:
        raise ConfigError(f"{path}: missing {missing}")
    if not cfg.get("model_dataset") and not cfg.get("model_source"):
        raise ConfigError(f"{path}: name the model: model_dataset or model_source")
    if "YOUR-KAGGLE-USERNAME" in json.dumps(cfg):
        raise ConfigError(f"{path}: replace YOUR-KAGGLE-USERNAME with your Kaggle username")
    check_run_options(cfg.get("run", {}), path)
    return cfg


def metadata(cfg: dict[str, object], template: dict[str, object]) -> dict[str, object]:
    """kernel-metadata.json for this config; internet off, always, explicitly."""
    user = cfg["username"]
    datasets = [f"{user}/{cfg['wheels_dataset']}"]
    if cfg.get("model_dataset"):
        datasets.append(f"{user}/{cfg['model_dataset']}")
    return {
        **template,
        "id": f"{user}/{cfg['kernel_slug']}",
        "title": cfg.get("title") or cfg["kernel_slug"],
        "code_file": "airv_kernel.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": bool(cfg.get("is_private", True)),
        "enable_gpu": True,
        "enable_internet": False,
        "dataset_sources": datasets,
        "competition_sources": [cfg["competition"]],
        "model_sources": [cfg["model_source"]] if cfg.get("model_source") else [],
    }


def embed(script: str, cfg: dict[str, object]) -> str:
    """The entry script with the kernel's share of the config in its CONFIG block."""
    kernel_cfg = {k: cfg[k] for k in ("run", "quick_tasks", "challenges", "model") if k in cfg}
    payload = json.dumps(kernel_cfg, indent=2, sort_keys=True)
    if '"""' in payload:
        raise ConfigError('config values must not contain """')
    new, n = _CONFIG_BLOCK.subn(
        lambda m: m.group(1) + f'CONFIG: dict[str, object] = json.loads(r"""{payload}""")\n',
        script,
    )
    if n != 1:
        raise ConfigError("entry script has no airv-config block to fill")
    return new


def build(config: Path, out_dir: Path, repo: Path = REPO) -> Path:
    cfg = load_config(config)
    template = read_json_object(repo / "kernel-metadata.json", "kernel metadata template")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernel-metadata.json").write_text(
        json.dumps(metadata(cfg, template), indent=2) + "\n"
    )
    script = (repo / "submission" / "airv_kernel.py").read_text()
    (out_dir / "airv_kernel.py").write_text(embed(script, cfg))
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m airv.kaggle.kernel", description=__doc__)
    p.add_argument("--config", type=Path, default=Path("kaggle-config.json"))
    p.add_argument("--out", type=Path, default=Path("build/kernel"))
    args = p.parse_args(argv)
    try:
        out = build(args.config, args.out)
    except AirvError as e:
        return report(e)
    print(f"kernel ready in {out}: push with `kaggle kernels push -p {out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The options of `airv run` (which `airv eval` and `airv plan` share) made into a parser and
a RunConfig, from one table (airv.run.optiontable.OPTIONS).

A few options are set by a rule that reads other options too (`_derived`); the rules that
check options against each other are in `validate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from airv.core.errors import ConfigError, InputError
from airv.core.prompt_format import (
    resolve_format,
)
from airv.engines.config import (
    DEFAULT_DFS_THRESHOLD,
    Backend,
)
from airv.engines.model import MODEL_CONFIG_FILE, default_max_model_len, visible_gpus
from airv.engines.openai_engine import check_endpoints
from airv.run.config import (
    RunConfig,
    eager_by_budget,
    eager_by_plan,
    start_mode,
)
from airv.run.option import (
    DEFAULT_LOG_LEVEL,
    RUN_DEFAULTS,
    RUN_GROUPS,
    Group,
    parse_task_cap,
)
from airv.run.optiontable import OPTIONS
from airv.run.recipes import apply_recipe

log = logging.getLogger(__name__)


def add_run_arguments(
    p: argparse.ArgumentParser,
    *,
    required: bool = True,
    out_help: str | None = None,
    groups: Sequence[Group] = RUN_GROUPS,
) -> None:
    """The options of `airv run`: the inputs, then each of `groups`. `airv eval` and
    `airv plan` take the inputs with required=False (they check them themselves, as they
    need them only to run a model) and --out with help of their own."""
    for group in (Group.INPUTS, *groups):
        arguments = p.add_argument_group(group.value)
        exclusive: dict[str, Any] = {}
        for option in OPTIONS:
            if option.group is not group:
                continue
            into = arguments
            if option.exclusive is not None:
                if option.exclusive not in exclusive:
                    exclusive[option.exclusive] = arguments.add_mutually_exclusive_group()
                into = exclusive[option.exclusive]
            help = out_help if option.flag == "--out" else None
            option.add_to(into, required=required, help=help)


def run_option_parser() -> argparse.ArgumentParser:
    """`airv run`'s options alone (no input required): how a recipe's options, and the
    Kaggle kernel's, are read. Their keys are whole flag names: no abbreviations."""
    p = argparse.ArgumentParser(prog="airv run", add_help=False, allow_abbrev=False)
    add_run_arguments(p, required=False)
    return p


def pin_workers(workers: int | None, n_gpus: int) -> tuple[str, ...]:
    """CUDA devices for the workers when --devices is not given: one worker per visible GPU
    by default; with --workers N, worker i on GPU i mod n_gpus (two per GPU can pay: ARC
    prompts are short). No GPU: CPU workers."""
    if n_gpus <= 0:
        return ()
    n = n_gpus if workers is None else workers
    return tuple(str(i % n_gpus) for i in range(n))


class _Given:
    """Parsed options; an option of a group the command does not take reads as unset (None)."""

    def __init__(self, args: argparse.Namespace):
        self._args = args

    def __getattr__(self, name: str) -> Any:
        return getattr(self._args, name, None)


def build_run_config(parsed: argparse.Namespace, *, on_paper: bool = False) -> RunConfig:
    """The RunConfig the options describe: each given option overrides its default, then the
    recipe's (airv.run.recipes), then the config classes'. `on_paper` (a run simulated by
    `airv plan --simulate`): the challenge file and the model are checked only if given."""
    recipe, supplied = apply_recipe(parsed, run_option_parser())
    given = _Given(parsed)
    if given.challenges is None and on_paper:
        parsed.challenges = Path("-")  # synthetic tasks: no file is read
    elif not given.challenges.exists():
        raise InputError("challenge file not found", path=given.challenges)
    if (given.model is not None or not on_paper) and not (given.model / MODEL_CONFIG_FILE).exists():
        raise InputError(
            f"not a Hugging Face model directory (no {MODEL_CONFIG_FILE})", path=given.model
        )
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(given, option.name)
        if value is None or option.path is None or option.derived:
            continue
        values[option.path] = value if option.to_config is None else option.to_config(value)
    values.update(_derived(given, values))
    values["recipe"] = None if recipe is None else recipe.name
    values["recipe_options"] = tuple(sorted((k, str(v)) for k, v in supplied.items()))
    cfg: RunConfig = _overridden(RUN_DEFAULTS, values)
    if given.plan is not None and given.enforce_eager is None:
        cfg = _start_by_plan(cfg, given.plan)
    validate(cfg, given)
    return cfg


def _start_by_plan(cfg: RunConfig, path: Path) -> RunConfig:
    """vLLM's start (eager or compiled) by `airv plan`'s measurement of both ways (--plan):
    the way that leaves time for more sweeps in this run's budget, less its reserve and the
    fine-tuning stage. A plan with one way measured leaves the budget rule."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read the plan: {exc.strerror or exc}", path=path) from exc
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc}", path=path) from exc
    starts = data.get("starts") if isinstance(data, dict) else None
    if not isinstance(starts, dict) or not starts:
        log.warning("%s measured one way of starting only: the budget rule decides", path)
        return cfg
    for mode in ("eager", "compiled"):
        m = starts.get(mode)
        figures = (
            [m.get(k) for k in ("start_seconds", "sweep_seconds")] if isinstance(m, dict) else []
        )
        if len(figures) != 2 or not all(isinstance(x, (int, float)) and x >= 0 for x in figures):
            raise InputError(
                f"starts.{mode} needs start_seconds and sweep_seconds (numbers >= 0)", path=path
            )
    available = cfg.time_budget - cfg.reserve_seconds - cfg.stage_seconds
    eager = eager_by_plan(starts, available)
    log.info("vLLM starts %s: by %s's measurement of both starts", start_mode(eager), path)
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, enforce_eager=eager))


def _derived(given: _Given, values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields set by rules that read more than their own option (OPTIONS' `derived`)."""
    out: dict[str, Any] = {}
    time_budget = values.get("time_budget", RUN_DEFAULTS.time_budget)
    out["engine.enforce_eager"] = (
        eager_by_budget(time_budget) if given.enforce_eager is None else given.enforce_eager
    )
    max_model_len = given.max_model_len or (
        None if given.model is None else default_max_model_len(given.model)
    )
    if max_model_len is not None:  # None: the model does not say; EngineConfig's holds
        out["engine.max_model_len"] = max_model_len
    if given.dfs_threshold is not None:
        out["sampling.dfs_threshold"] = given.dfs_threshold
    elif given.decode == "dfs":
        out["sampling.dfs_threshold"] = DEFAULT_DFS_THRESHOLD
    if given.task_cap is not None:
        out["task_cap_seconds"], out["task_cap_tokens"] = parse_task_cap(given.task_cap)
    out["prompt"] = resolve_format(
        model=given.model, preset=given.format_preset, format_file=given.format_file
    )
    if values.get("engine.backend") is Backend.OPENAI:  # one lane per server
        out["workers"], out["devices"] = len(values.get("engine.endpoints", ())), ()
        return out
    if given.devices is not None:
        devices = tuple(x.strip() for x in given.devices.split(",") if x.strip())
    else:
        devices = pin_workers(given.workers, visible_gpus())
    if given.workers is not None or devices:
        out["workers"] = len(devices) if given.workers is None else given.workers
    if devices:
        out["devices"] = devices
    return out


def _overridden(base: Any, values: Mapping[str, Any]) -> Any:
    """`base` (a config dataclass) with the fields `values` names by path replaced; nested
    configs ("engine.dtype") are rebuilt first, so each checks its own values."""
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            own[head] = value
    for head, inner in nested.items():
        own[head] = _overridden(getattr(base, head), inner)
    return dataclasses.replace(base, **own)


def validate(cfg: RunConfig, given: _Given) -> None:
    """The rules that hold options against each other, beyond each config's own checks."""
    if given.decode is not None and cfg.sampling.decode != given.decode:
        needs = {
            "greedy": "no --temperature, --beam-width or --dfs-threshold",
            "sampling": "--temperature > 0",
            "beam": "--beam-width B (B >= 2)",
            "dfs": "no --temperature or --beam-width",
        }[given.decode]
        raise ConfigError(
            f"--decode {given.decode} needs {needs}; the flags given ask for {cfg.sampling.decode}"
        )
    if cfg.engine.backend is Backend.OPENAI:
        check_endpoints(cfg.engine.endpoints, allow_insecure_key=cfg.engine.allow_insecure_key)
        if given.workers is not None and given.workers != len(cfg.engine.endpoints):
            raise ConfigError("with --engine openai, the workers are the endpoints: drop --workers")


def configure_logging(level: str | None) -> None:
    logging.basicConfig(
        level=getattr(logging, level or DEFAULT_LOG_LEVEL),
        format="%(asctime)s airv %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )

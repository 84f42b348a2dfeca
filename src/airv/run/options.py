"""The options of `airv run` (which `airv eval` and `airv plan` share), in groups, and how the
options become a RunConfig.

Every flag defaults to None and only overrides the defaults held by the config dataclasses,
so a default is stated once (airv.run.config, airv.engines.config) and `--help` quotes it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from airv.adapt.config import Loss, Schedule, TTTConfig, TTTMode
from airv.core.augment import ViewPolicy
from airv.core.durations import format_duration, parse_duration
from airv.core.errors import ConfigError, InputError
from airv.core.prompt_format import (
    DEFAULT_PRESET,
    MODEL_PROMPT_FILE,
    preset_names,
    resolve_format,
)
from airv.core.voting import VoteMode
from airv.engines.config import (
    DECODE_MODES,
    DEFAULT_DFS_THRESHOLD,
    Backend,
    Decoding,
    Dtype,
    EngineConfig,
    replace,
)
from airv.engines.model import MODEL_CONFIG_FILE, default_max_model_len, visible_gpus
from airv.engines.openai_engine import API_KEY_ENV, check_endpoints
from airv.run.config import (
    COMPILE_MIN_BUDGET,
    RESERVE_CAP,
    RESERVE_FLOOR,
    RESERVE_SHARE,
    RunConfig,
    eager_by_budget,
)
from airv.run.recipes import apply_recipe, recipe_names

RUN_DESCRIPTION = """\
Turn a Kaggle challenge file into submission.json with a fine-tuned causal LM.

For every test input airv builds augmented prompts (the 8 rotations/flips, colour
permutations, train-pair order), streams them through the engines from one shared queue,
reverses each augmentation on the answers, votes, and rewrites OUT/submission.json as
answers arrive. OUT/predictions.jsonl logs every completion: rerunning with the same --out
resumes from it (only with the same model, format, views, decoding and adapters; --fresh
starts over). One run at a time per --out. OUT/run_summary.json holds the figures for tuning
the budget.

The clock starts at process start (model loading counts). At the deadline, or on SIGTERM or
Ctrl-C, the engines are stopped and the last submission.json stands; the process ends before
its --time-budget does. Exit codes: 0 done, deadline reached or stopped by a signal, 2 bad
input or options (or --out in use by another run), 3 the engine kept failing after its
restarts (a valid submission.json is still written).
"""

# The defaults, for --help texts: quoted from the config dataclasses, never restated.
_RUN = RunConfig(challenges=Path("."), out_dir=Path("."))
_ENGINE = EngineConfig()
_SAMPLING = Decoding()
_TTT = TTTConfig()


def parse_task_cap(text: str) -> tuple[float | None, int | None]:
    """'90s' / '2m' -> seconds; '20000tok' -> tokens."""
    t = text.strip().lower()
    unreadable = ConfigError(f"cannot read task cap {text!r}: use e.g. 90s, 2m or 20000tok")
    if t.endswith("tok"):
        try:
            n = int(t[:-3])
        except ValueError:
            raise unreadable from None
        if n <= 0:
            raise ConfigError(f"task cap must be positive, got {text!r}")
        return None, n
    try:
        seconds = parse_duration(t)
    except ConfigError:
        raise unreadable from None
    if seconds <= 0:
        raise ConfigError(f"task cap must be positive, got {text!r}")
    return seconds, None


def add_inputs_arguments(
    p: argparse.ArgumentParser, *, required: bool = True, out_help: str | None = None
) -> None:
    """--challenges, --model, --out, --max-tasks. `airv eval` and `airv plan` take them with
    required=False: they check --challenges/--model/--out themselves, as they need them only
    to run a model."""
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--challenges",
        type=Path,
        required=required,
        metavar="FILE",
        help="Kaggle challenge file, e.g. arc-agi_test_challenges.json",
    )
    io.add_argument(
        "--model",
        type=Path,
        required=required,
        metavar="DIR",
        help="merged model in Hugging Face format (config.json, weights, tokenizer)",
    )
    io.add_argument(
        "--out",
        type=Path,
        required=required,
        metavar="DIR",
        help=out_help or "output directory: submission.json, predictions.jsonl, run_summary.json",
    )
    io.add_argument(
        "--max-tasks",
        type=int,
        metavar="N",
        help="run inference on the first N tasks only (the rest get [[0]]); for quick trials",
    )
    io.add_argument(
        "--recipe",
        metavar="NAME",
        help="a winner's whole method as defaults (format, views, TTT, decoding, re-scoring, "
        "selection); every option given explicitly wins. `airv recipe` lists them; default: "
        f"the model's airv.json 'recipe', if any. Known: {', '.join(recipe_names())}",
    )
    io.add_argument(
        "--fresh",
        action="store_true",
        default=None,
        help="start over in --out: delete its logs and adapters instead of resuming from them "
        "(a resume whose model, format, views, decoding or adapters differ is refused)",
    )


def add_budget_arguments(p: argparse.ArgumentParser) -> None:
    """The wall-time budget, the reserve and per-task caps."""
    rc = _RUN
    t = p.add_argument_group("time budget")
    t.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="total wall time from process start, e.g. 11h30m, 45m, 600s "
        f"(default {format_duration(rc.time_budget)})",
    )
    t.add_argument(
        "--reserve",
        metavar="DURATION",
        help="kept back to stop the engines and write the final files; the run ends before "
        f"its budget does (default: {RESERVE_SHARE:.0%}% of the budget, at least "
        f"{format_duration(RESERVE_FLOOR)} and at most {format_duration(RESERVE_CAP)})",
    )
    t.add_argument(
        "--task-cap",
        metavar="CAP",
        help="per-task cap on engine time (e.g. 90s) or tokens (e.g. 20000tok); a "
        f"task past its cap gets no more rounds (default: {rc.task_cap_shares:g} fair shares "
        "of the budget: budget after the reserve / tasks)",
    )
    t.add_argument(
        "--order",
        choices=["cheapest", "file"],
        help="work order within a round: cheapest tasks first so most tasks answer "
        f"early, or file order (default {'cheapest' if rc.cheapest_first else 'file'})",
    )


def add_augmentation_arguments(p: argparse.ArgumentParser) -> None:
    """How many augmented views each test input gets, and which."""
    rc = _RUN
    a = p.add_argument_group("augmentation rounds")
    a.add_argument(
        "--first-round",
        type=int,
        metavar="K",
        help=f"augmentations per test input in round 1 (default {rc.first_round})",
    )
    a.add_argument(
        "--per-round",
        type=int,
        metavar="K",
        help=f"augmentations added per later round (default {rc.per_round})",
    )
    a.add_argument(
        "--max-augmentations",
        type=int,
        metavar="K",
        help=f"augmentations per test input over all rounds (default {rc.max_augmentations})",
    )
    a.add_argument(
        "--settle-margin",
        type=int,
        metavar="VOTES",
        help="stop adding augmentations to a test input once its leader leads by "
        f"this many votes; 0 = never (default {rc.settle_margin})",
    )
    a.add_argument(
        "--permute-background",
        action="store_true",
        default=None,
        help="let colour permutations move colour 0 too (default: 0 stays)",
    )
    a.add_argument(
        "--no-colour-permutations",
        action="store_true",
        default=None,
        help="augment with D8 transforms and train order only",
    )
    a.add_argument(
        "--no-train-shuffle",
        action="store_true",
        default=None,
        help="keep the train pairs in file order",
    )
    a.add_argument(
        "--seed", type=int, help=f"seed of the augmentation planner (default {rc.views.seed})"
    )


def add_voting_arguments(p: argparse.ArgumentParser) -> None:
    """The voting mode and re-scoring."""
    rc = _RUN
    v = p.add_argument_group("voting")
    v.add_argument(
        "--vote",
        choices=[m.value for m in VoteMode],
        help="grid: majority of identical grids, ties by mean logprob; cell: per-cell "
        "majority among grids of the most-voted shape; rescore: the top candidates re-ranked "
        "by their likelihood under other augmentations (prefill only); views-nll (NVARC's "
        "rule): the top candidates ranked by the number of views that produced them minus "
        "their mean NLL under those augmentations, re-scored the same way "
        f"(default {rc.vote_mode.value})",
    )
    v.add_argument(
        "--rescore-top",
        type=int,
        metavar="M",
        help="rescore, views-nll: distinct candidates scored per test input "
        f"(default {rc.rescore_top})",
    )
    v.add_argument(
        "--rescore-augmentations",
        type=int,
        metavar="J",
        help="rescore, views-nll: augmentations each candidate is scored under "
        f"(default {rc.rescore_augmentations})",
    )


def add_format_arguments(p: argparse.ArgumentParser) -> None:
    """The prompt format."""
    f = p.add_argument_group(
        "prompt format (precedence: --format, --format-preset, the model's "
        f"{MODEL_PROMPT_FILE}, then the {DEFAULT_PRESET!r} preset)"
    )
    f.add_argument(
        "--format",
        type=Path,
        metavar="FILE",
        dest="format_file",
        help=f"a format file, written like {MODEL_PROMPT_FILE} in a model directory: a preset "
        "and/or grid, layout, template (Jinja2) fields; see the README's Prompt format",
    )
    f.add_argument(
        "--format-preset",
        metavar="NAME",
        help=f"a format shipped with airv: {', '.join(preset_names())}",
    )


def add_ttt_arguments(p: argparse.ArgumentParser) -> None:
    """Test-time fine-tuning."""
    tc = _TTT
    g = p.add_argument_group(
        "test-time fine-tuning (LoRA adapters trained on each task's own pairs; off by default)"
    )
    g.add_argument(
        "--ttt",
        choices=[m.value for m in TTTMode],
        help="per-task: one adapter per task; joint: one for the whole file "
        f"(default {tc.mode.value})",
    )
    g.add_argument(
        "--ttt-budget",
        metavar="SHARE",
        help="the stage's share of the budget after the reserve: a fraction (such as 0.4) or a "
        f"duration (2h, 900s) (default {tc.budget})",
    )
    g.add_argument(
        "--ttt-task-cap",
        metavar="DURATION",
        help=f"training time per adapter (default: {tc.task_cap_shares:g} fair shares of the "
        "stage)",
    )
    g.add_argument("--ttt-steps", type=int, metavar="N", help=f"steps per adapter ({tc.steps})")
    g.add_argument(
        "--ttt-lr", type=float, metavar="LR", help=f"learning rate (default {tc.learning_rate})"
    )
    g.add_argument(
        "--ttt-embedding-lr",
        type=float,
        metavar="LR",
        help="learning rate of LoRA on embed_tokens/lm_head, when the targets name them "
        "(default: --ttt-lr)",
    )
    g.add_argument(
        "--ttt-schedule",
        choices=[s.value for s in Schedule],
        help=f"learning rate after the warm-up, down to zero (default {tc.schedule.value})",
    )
    g.add_argument(
        "--ttt-warmup",
        type=float,
        metavar="SHARE",
        help=f"share of the steps with the learning rate rising from zero (default {tc.warmup})",
    )
    g.add_argument(
        "--ttt-rslora",
        action="store_true",
        default=None,
        help="rank-stabilised LoRA: scale by alpha / sqrt(rank) (default: alpha / rank)",
    )
    g.add_argument(
        "--ttt-batch", type=int, metavar="N", help=f"sequences per step ({tc.batch_size})"
    )
    g.add_argument("--ttt-rank", type=int, metavar="R", help=f"LoRA rank (default {tc.rank})")
    g.add_argument("--ttt-alpha", type=int, metavar="A", help=f"LoRA alpha (default {tc.alpha})")
    g.add_argument(
        "--ttt-target-modules",
        metavar="NAMES",
        help="peft target modules: all-linear, or names such as q_proj,v_proj; add "
        f"embed_tokens,lm_head for LoRA on the embeddings and the head ({tc.target_modules})",
    )
    g.add_argument(
        "--scratch",
        type=Path,
        metavar="DIR",
        help="where adapters are written, as DIR/adapters (default: OUT; the Kaggle kernel "
        "uses a folder under /tmp, never /kaggle/working)",
    )
    g.add_argument(
        "--no-adapter-fallback",
        dest="adapter_fallback",
        action="store_false",
        default=None,
        help="an adapter vLLM does not serve leaves its task to the base model (default: the "
        "transformers engine answers that task if it serves the adapter)",
    )
    g.add_argument(
        "--keep-adapters",
        action="store_true",
        default=None,
        help="keep every adapter (default: each is deleted once its task is answered and "
        "re-scored)",
    )
    g.add_argument(
        "--ttt-augmentations",
        type=int,
        metavar="K",
        help="augmented views per task; each gives one sequence per train pair "
        f"(default {tc.augmentations})",
    )
    g.add_argument(
        "--ttt-loss",
        choices=[m.value for m in Loss],
        help="which tokens carry loss: the held-out answer, or every output grid of the "
        f"sequence, the train pairs' too (default {tc.loss.value})",
    )


def parse_share(text: str) -> float:
    """'0.4' -> a fraction; '2h', '900s' or '900' -> seconds (a plain number above 1)."""
    try:
        value = float(text)
    except ValueError:
        return parse_duration(text)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--ttt-budget must be positive, got {text!r}")
    return value


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """How the model is loaded and served."""
    rc = _RUN
    ec = _ENGINE
    e = p.add_argument_group("engine")
    e.add_argument(
        "--engine",
        choices=[b.value for b in Backend],
        help="vllm, hf (transformers), or openai (vLLM's OpenAI-compatible servers, "
        f"--endpoint); default {ec.backend.value}",
    )
    e.add_argument(
        "--endpoint",
        action="append",
        metavar="URL",
        help="with --engine openai: a server's base URL including /v1, e.g. "
        "http://127.0.0.1:8000/v1 (repeat for several; they share one queue). The API key, "
        f"if any, is read from ${API_KEY_ENV}, and sent only over https:// or to a loopback "
        "address",
    )
    e.add_argument(
        "--allow-insecure-key",
        action="store_true",
        default=None,
        help=f"send ${API_KEY_ENV} to plain http:// endpoints on other machines too",
    )
    e.add_argument(
        "--dtype",
        choices=[x.value for x in Dtype],
        help="auto picks float16 on GPUs without bf16 (T4), bfloat16 on newer GPUs, "
        f"the checkpoint's dtype on CPU (default {ec.dtype.value})",
    )
    e.add_argument(
        "--cpu-kv-cache-gib",
        type=int,
        metavar="GIB",
        help=f"vLLM on CPU only: KV cache size (default {ec.cpu_kv_cache_gib}; "
        "VLLM_CPU_KVCACHE_SPACE, if set, wins)",
    )
    e.add_argument(
        "--max-model-len",
        type=int,
        metavar="TOKENS",
        help=f"context length; train pairs are dropped (largest first) to fit "
        f"(default {ec.max_model_len}, or the model's max_position_embeddings if smaller)",
    )
    e.add_argument(
        "--gpu-memory-utilization",
        type=float,
        metavar="FRACTION",
        help=f"vLLM's share of GPU memory (default {ec.gpu_memory_utilization})",
    )
    start = e.add_mutually_exclusive_group()
    start.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="skip vLLM graph compilation: faster start, slower decoding (default: eager for a "
        f"time budget under {format_duration(COMPILE_MIN_BUDGET)}, else compiled)",
    )
    start.add_argument(
        "--compile",
        dest="enforce_eager",
        action="store_false",
        default=None,
        help="compile vLLM's graphs (torch compile on CPU, CUDA graphs on a GPU) whatever the "
        "budget: slower start, faster decoding",
    )
    e.add_argument(
        "--ngram-speculative-tokens",
        type=int,
        metavar="K",
        help="vLLM n-gram (prompt lookup) speculative decoding with K tokens; 0 = off",
    )
    e.add_argument(
        "--quantization",
        metavar="METHOD",
        help="vLLM quantization method of a quantized checkpoint, e.g. awq, gptq, fp8 "
        "(default: what the checkpoint's config.json declares; vllm backend only)",
    )
    e.add_argument(
        "--engine-log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help=f"vLLM's own log level (default {ec.log_level}; VLLM_LOGGING_LEVEL, if set, wins); "
        "--log-level is airv's",
    )
    e.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="engine processes (one per GPU); default: one per --devices entry, else 1",
    )
    e.add_argument(
        "--devices",
        metavar="IDS",
        help="comma-separated CUDA device ids, one worker each, e.g. 0,1,2,3 "
        "(default: all visible GPUs, none on CPU)",
    )
    e.add_argument(
        "--inflight",
        type=int,
        metavar="N",
        help="prompts each engine holds in flight, refilled as they finish; only these are "
        f"lost at the deadline or a crash (default {rc.inflight})",
    )
    e.add_argument(
        "--stall-timeout",
        metavar="DURATION",
        help="an engine with work in flight that returns nothing this long is restarted "
        f"(default {format_duration(rc.stall_seconds)})",
    )
    e.add_argument(
        "--max-restarts",
        type=int,
        metavar="N",
        help="engine restarts per run (death, vLLM's engine process killed, error or stall) "
        f"while time remains; then the engine stays down (default {rc.max_restarts})",
    )


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """How answers are decoded."""
    sc = _SAMPLING
    s = p.add_argument_group("decoding (default greedy)")
    s.add_argument(
        "--decode",
        choices=DECODE_MODES,
        help="greedy (default); sampling (needs --temperature > 0); beam (needs --beam-width); "
        "dfs: depth-first search, every answer whose probability stays above --dfs-threshold "
        "(the ARChitects' and NVARC's decoder). Without it, the other flags decide",
    )
    s.add_argument(
        "--dfs-threshold",
        type=float,
        metavar="P",
        help="dfs: keep answers with probability above P, in (0, 1) "
        f"(default {DEFAULT_DFS_THRESHOLD}; implies --decode dfs)",
    )
    s.add_argument(
        "--dfs-max-candidates",
        type=int,
        metavar="N",
        help="dfs: answers kept per prompt (view), the likeliest "
        f"(default {sc.dfs_max_candidates})",
    )
    s.add_argument(
        "--dfs-max-nodes",
        type=int,
        metavar="N",
        help="dfs: next-token distributions computed per prompt (view) before the search stops "
        f"with what it found (default {sc.dfs_max_nodes}); the task cap bounds a task's time",
    )
    s.add_argument(
        "--n",
        type=int,
        help="completions per prompt; > 1 needs --temperature > 0 or --beam-width "
        f"(default {sc.n})",
    )
    s.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="0 = greedy (default); AIRV gets its diversity from the augmentations",
    )
    s.add_argument("--top-k", type=int, metavar="K", help="sample from the K likeliest; 0 = off")
    s.add_argument(
        "--top-p", type=float, metavar="P", help=f"nucleus sampling mass (default {sc.top_p})"
    )
    s.add_argument(
        "--min-p",
        type=float,
        metavar="P",
        help=f"drop tokens below P x the top one (default {sc.min_p:g})",
    )
    s.add_argument(
        "--repetition-penalty",
        type=float,
        help="1.0 = off (default); other values hurt ARC, whose answers copy the input",
    )
    s.add_argument(
        "--presence-penalty",
        type=float,
        metavar="X",
        help=f"in [-2, 2], 0 = off (default {sc.presence_penalty}); vllm backend only. "
        "Penalties hurt ARC: answers copy the input",
    )
    s.add_argument(
        "--frequency-penalty",
        type=float,
        metavar="X",
        help=f"in [-2, 2], 0 = off (default {sc.frequency_penalty}); vllm backend only. "
        "Penalties hurt ARC: answers copy the input",
    )
    s.add_argument(
        "--sampling-seed", type=int, metavar="N", help="seed for sampling (default: engine seed)"
    )
    s.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    s.add_argument(
        "--beam-width",
        type=int,
        metavar="B",
        help="beam search with B beams (vLLM LLM.beam_search); 0 = off",
    )
    s.add_argument(
        "--length-penalty",
        type=float,
        metavar="X",
        help="beam search ranks beams by logprob / length**X; > 1 favours longer answers "
        f"(default {sc.length_penalty}; needs --beam-width)",
    )


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Progress and logging."""
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


# The option groups of `airv run`, in --help order. `airv eval` takes them all (it can run);
# `airv plan` takes all but voting (it prices generation only).
RUN_GROUPS: tuple[Callable[[argparse.ArgumentParser], None], ...] = (
    add_budget_arguments,
    add_augmentation_arguments,
    add_voting_arguments,
    add_format_arguments,
    add_ttt_arguments,
    add_engine_arguments,
    add_sampling_arguments,
    add_output_arguments,
)


def add_run_arguments(
    p: argparse.ArgumentParser,
    *,
    required: bool = True,
    out_help: str | None = None,
    groups: Sequence[Callable[[argparse.ArgumentParser], None]] = RUN_GROUPS,
) -> None:
    """The options of `airv run`: the inputs, then each of `groups`."""
    add_inputs_arguments(p, required=required, out_help=out_help)
    for add in groups:
        add(p)


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


def run_option_parser() -> argparse.ArgumentParser:
    """`airv run`'s options alone (no input required): how a recipe's options, and the
    Kaggle kernel's, are read."""
    p = argparse.ArgumentParser(prog="airv run", add_help=False)
    add_run_arguments(p, required=False)
    return p


def build_run_config(parsed: argparse.Namespace) -> RunConfig:
    """The RunConfig the options describe: each given option overrides its default, then the
    recipe's (airv.run.recipes), then the config classes'."""
    recipe, supplied = apply_recipe(parsed, run_option_parser())
    args = _Given(parsed)
    if not args.challenges.exists():
        raise InputError("challenge file not found", path=args.challenges)
    if not (args.model / MODEL_CONFIG_FILE).exists():
        raise InputError(
            f"not a Hugging Face model directory (no {MODEL_CONFIG_FILE})", path=args.model
        )
    time_budget = (
        RunConfig.time_budget if args.time_budget is None else parse_duration(args.time_budget)
    )
    engine = replace(
        EngineConfig(model=args.model),
        backend=None if args.engine is None else Backend(args.engine),
        dtype=None if args.dtype is None else Dtype(args.dtype),
        max_model_len=args.max_model_len or default_max_model_len(args.model),
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=eager_by_budget(time_budget)
        if args.enforce_eager is None
        else args.enforce_eager,
        cpu_kv_cache_gib=args.cpu_kv_cache_gib,
        ngram_speculative_tokens=args.ngram_speculative_tokens,
        quantization=args.quantization,
        log_level=args.engine_log_level,
        endpoints=None if args.endpoint is None else tuple(args.endpoint),
        allow_insecure_key=args.allow_insecure_key,
    )
    sampling = replace(
        Decoding(),
        n=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.sampling_seed,
        stop=None if args.stop is None else tuple(args.stop),
        beam_width=args.beam_width,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        length_penalty=args.length_penalty,
        dfs_threshold=args.dfs_threshold
        if args.dfs_threshold is not None or args.decode != "dfs"
        else DEFAULT_DFS_THRESHOLD,
        dfs_max_candidates=args.dfs_max_candidates,
        dfs_max_nodes=args.dfs_max_nodes,
    )
    if args.decode is not None and sampling.decode != args.decode:
        needs = {
            "greedy": "no --temperature, --beam-width or --dfs-threshold",
            "sampling": "--temperature > 0",
            "beam": "--beam-width B (B >= 2)",
            "dfs": "no --temperature or --beam-width",
        }[args.decode]
        raise ConfigError(
            f"--decode {args.decode} needs {needs}; the flags given ask for {sampling.decode}"
        )
    if engine.backend is Backend.OPENAI:
        check_endpoints(engine.endpoints, allow_insecure_key=engine.allow_insecure_key)
    prompt = resolve_format(
        model=args.model, preset=args.format_preset, format_file=args.format_file
    )
    devices: tuple[str, ...] | None = None
    if args.devices is not None:
        devices = tuple(x.strip() for x in args.devices.split(",") if x.strip())
    else:
        devices = pin_workers(args.workers, visible_gpus())
    workers = args.workers if args.workers is not None else (len(devices) if devices else None)
    if engine.backend is Backend.OPENAI:  # one lane per server
        if args.workers is not None and args.workers != len(engine.endpoints):
            raise ConfigError("with --engine openai, the workers are the endpoints: drop --workers")
        workers, devices = len(engine.endpoints), ()
    cap_s, cap_t = (None, None) if args.task_cap is None else parse_task_cap(args.task_cap)
    cfg: RunConfig = replace(
        RunConfig(challenges=args.challenges, out_dir=args.out),
        engine=engine,
        sampling=sampling,
        prompt=prompt,
        ttt=replace(
            TTTConfig(),
            mode=None if args.ttt is None else TTTMode(args.ttt),
            budget=None if args.ttt_budget is None else parse_share(args.ttt_budget),
            task_cap_seconds=None
            if args.ttt_task_cap is None
            else parse_duration(args.ttt_task_cap),
            steps=args.ttt_steps,
            learning_rate=args.ttt_lr,
            embedding_learning_rate=args.ttt_embedding_lr,
            schedule=None if args.ttt_schedule is None else Schedule(args.ttt_schedule),
            warmup=args.ttt_warmup,
            rslora=args.ttt_rslora,
            batch_size=args.ttt_batch,
            rank=args.ttt_rank,
            alpha=args.ttt_alpha,
            target_modules=args.ttt_target_modules,
            augmentations=args.ttt_augmentations,
            loss=None if args.ttt_loss is None else Loss(args.ttt_loss),
        ),
        scratch_dir=args.scratch,
        keep_adapters=args.keep_adapters,
        adapter_fallback=args.adapter_fallback,
        vote_mode=None if args.vote is None else VoteMode(args.vote),
        rescore_top=args.rescore_top,
        rescore_augmentations=args.rescore_augmentations,
        time_budget=time_budget,
        reserve=None if args.reserve is None else parse_duration(args.reserve),
        task_cap_seconds=cap_s,
        task_cap_tokens=cap_t,
        cheapest_first=None if args.order is None else args.order == "cheapest",
        first_round=args.first_round,
        per_round=args.per_round,
        max_augmentations=args.max_augmentations,
        settle_margin=args.settle_margin,
        views=replace(
            ViewPolicy(),
            keep_background=None if args.permute_background is None else False,
            permute_colours=None if args.no_colour_permutations is None else False,
            shuffle_train=None if args.no_train_shuffle is None else False,
            seed=args.seed,
        ),
        workers=workers,
        devices=devices or None,
        inflight=args.inflight,
        stall_seconds=None if args.stall_timeout is None else parse_duration(args.stall_timeout),
        max_restarts=args.max_restarts,
        max_tasks=args.max_tasks,
        fresh=args.fresh,
        recipe=None if recipe is None else recipe.name,
        recipe_options=tuple(sorted((k, str(v)) for k, v in supplied.items())),
        progress=False if args.no_progress else None,
    )
    return cfg


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s airv %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def run_command(args: argparse.Namespace) -> int:
    from airv.run.pipeline import run

    configure_logging(args.log_level)
    return run(build_run_config(args))

"""Every option of `airv run` (which `airv eval` and `airv plan` share), one `Option` row
each (airv.run.option): its flag, its --help group, the config field it sets (a path into
RunConfig such as "engine.max_model_len") and how its text becomes that field's value. The
parser, the mapping to a RunConfig and the --help defaults are all made from this table
(airv.run.options); the README's option tables and the recipes are checked against it by
tests/test_options_table.py.
"""

from __future__ import annotations

import enum
import operator
from pathlib import Path

from airv.adapt.config import Loss, Schedule, TTTMode
from airv.core.prompt_format import (
    DEFAULT_PRESET,
    MODEL_PROMPT_FILE,
    preset_names,
)
from airv.core.units import format_duration, parse_duration, parse_size
from airv.core.voting import VoteMode
from airv.engines.config import (
    DECODE_MODES,
    DEFAULT_DFS_THRESHOLD,
    Backend,
    Dtype,
)
from airv.engines.openai_engine import API_KEY_ENV
from airv.run.config import (
    COMPILE_MIN_BUDGET,
    RESERVE_CAP,
    RESERVE_FLOOR,
    RESERVE_SHARE,
    SCRATCH_MARGIN,
)
from airv.run.option import (
    DEFAULT_LOG_LEVEL,
    ENGINE_DEFAULTS,
    LOG_LEVELS,
    RUN_DEFAULTS,
    TTT_DEFAULTS,
    Group,
    Option,
    parse_share,
)
from airv.run.recipes import recipe_names
from airv.run.schedule import ViewSchedule


def _values(kind: type[enum.Enum]) -> list[str]:
    return [str(m.value) for m in kind]


def _cheapest_first(order: str) -> bool:
    return order == "cheapest"


def _order(cheapest_first: bool) -> str:
    return "cheapest" if cheapest_first else "file"


_G = Group
# Every option of `airv run`, by group in --help order.
OPTIONS: tuple[Option, ...] = (
    Option("--challenges", _G.INPUTS, "challenges", type=Path, metavar="FILE", required=True,
           help="Kaggle challenge file, e.g. arc-agi_test_challenges.json"),
    Option("--model", _G.INPUTS, "engine.model", type=Path, metavar="DIR", required=True,
           help="merged model in Hugging Face format (config.json, weights, tokenizer)"),
    Option("--out", _G.INPUTS, "out_dir", type=Path, metavar="DIR", required=True,
           help="output directory: submission.json, predictions.jsonl, run_summary.json"),
    Option("--max-tasks", _G.INPUTS, "max_tasks", type=int, metavar="N", default="all",
           help="run inference on the first N tasks only (the rest get [[0]]); for quick "
           "trials"),
    Option("--recipe", _G.INPUTS, "recipe", metavar="NAME", derived=True,
           default=f"the model's {MODEL_PROMPT_FILE} 'recipe', if any",
           help="a winner's whole method as defaults (format, views, TTT, decoding, "
           "re-scoring, selection); every option given explicitly wins. `airv recipe` lists "
           f"them: {', '.join(recipe_names())}"),
    Option("--fresh", _G.INPUTS, "fresh", action="store_true",
           help="start over in --out: delete its logs and adapters instead of resuming from "
           "them (a resume whose model, format, views, decoding or adapters differ is "
           "refused)"),

    Option("--time-budget", _G.BUDGET, "time_budget", metavar="DURATION",
           to_config=parse_duration, shown=format_duration,
           help="total wall time from process start, e.g. 11h30m, 45m, 600s"),
    Option("--reserve", _G.BUDGET, "reserve", metavar="DURATION", to_config=parse_duration,
           default=f"{RESERVE_SHARE:.0%} of the budget, at least "
           f"{format_duration(RESERVE_FLOOR)} and at most {format_duration(RESERVE_CAP)}",
           help="kept back to stop the engines and write the final files; the run ends "
           "before its budget does"),
    Option("--task-cap", _G.BUDGET, "task_cap_seconds", metavar="CAP", derived=True,
           default=f"{RUN_DEFAULTS.task_cap_shares:g} fair shares of the budget: budget after the "
           "reserve / tasks",
           help="per-task cap on engine time (e.g. 90s) or tokens (e.g. 20000tok); a task "
           "past its cap gets no more rounds"),
    Option("--order", _G.BUDGET, "cheapest_first", choices=("cheapest", "file"),
           to_config=_cheapest_first, shown=_order,
           help="with --schedule uniform, the work order within a round: cheapest tasks first "
           "so most tasks answer early, or file order (the gain schedule weighs each view's "
           "price itself)"),

    Option("--first-round", _G.AUGMENTATION, "first_round", type=int, metavar="K",
           help="augmentations per test input in round 1 (with --schedule gain: the views "
           "every test input gets before any gets more)"),
    Option("--per-round", _G.AUGMENTATION, "per_round", type=int, metavar="K",
           help="augmentations added per later round"),
    Option("--max-augmentations", _G.AUGMENTATION, "max_augmentations", type=int,
           metavar="K", help="augmentations per test input over all rounds"),
    Option("--settle-margin", _G.AUGMENTATION, "settle_margin", type=int, metavar="VOTES",
           help="stop adding augmentations to a test input once its leader leads by this "
           "many votes; 0 = never"),
    Option("--schedule", _G.AUGMENTATION, "schedule", choices=_values(ViewSchedule),
           to_config=ViewSchedule,
           help="gain: each next view to the test input where it is expected to change the "
           "top 2 most per second (its parse rate, how close its second and third answers "
           "are, how much its answers agree, the task's measured seconds per view), the "
           "first round by price over the task's promise (how likely the model finds its "
           "last demonstration given the one before it, scored first where that is cheap); "
           "uniform: rounds of the same number of new views per unsettled test input"),
    Option("--permute-background", _G.AUGMENTATION, "views.keep_background",
           action="store_true", to_config=operator.not_, default="0 stays",
           help="let colour permutations move colour 0 too"),
    Option("--no-colour-permutations", _G.AUGMENTATION, "views.permute_colours",
           action="store_true", to_config=operator.not_,
           help="augment with D8 transforms and train order only"),
    Option("--no-train-shuffle", _G.AUGMENTATION, "views.shuffle_train",
           action="store_true", to_config=operator.not_,
           help="keep the train pairs in file order"),
    Option("--seed", _G.AUGMENTATION, "views.seed", type=int,
           help="seed of the augmentation planner"),

    Option("--vote", _G.VOTING, "vote_mode", choices=_values(VoteMode), to_config=VoteMode,
           help="grid: majority of identical grids, ties by mean logprob; cell: per-cell "
           "majority among grids of the most-voted shape; rescore: the top candidates "
           "re-ranked by their likelihood under other augmentations (prefill only); "
           "views-nll (NVARC's rule): the top candidates ranked by the number of views that "
           "produced them minus their mean NLL under those augmentations, re-scored the "
           "same way"),
    Option("--rescore-top", _G.VOTING, "rescore_top", type=int, metavar="M",
           help="rescore, views-nll: distinct candidates scored per test input"),
    Option("--rescore-augmentations", _G.VOTING, "rescore_augmentations", type=int,
           metavar="J", help="rescore, views-nll: augmentations each candidate is scored "
           "under"),

    Option("--format", _G.FORMAT, "prompt", type=Path, metavar="FILE", dest="format_file",
           derived=True, default="none",
           help=f"a format file, written like {MODEL_PROMPT_FILE} in a model directory: a "
           "preset and/or grid, layout, template (Jinja2) fields; see the README's Prompt "
           "format"),
    Option("--format-preset", _G.FORMAT, "prompt", metavar="NAME", derived=True,
           default=f"the model's {MODEL_PROMPT_FILE}, else {DEFAULT_PRESET!r}",
           help=f"a format shipped with airv: {', '.join(preset_names())}"),

    Option("--ttt", _G.TTT, "ttt.mode", choices=_values(TTTMode), to_config=TTTMode,
           help="per-task: one adapter per task; joint: one for the whole file"),
    Option("--ttt-budget", _G.TTT, "ttt.budget", metavar="SHARE", to_config=parse_share,
           help="the stage's share of the budget after the reserve: a fraction such as 0.4, "
           "or a duration such as 2h or 900s"),
    Option("--ttt-task-cap", _G.TTT, "ttt.task_cap_seconds", metavar="DURATION",
           to_config=parse_duration,
           default=f"{TTT_DEFAULTS.task_cap_shares:g} fair shares of the stage",
           help="training time per adapter"),
    Option("--ttt-steps", _G.TTT, "ttt.steps", type=int, metavar="N",
           help="steps per adapter"),
    Option("--ttt-lr", _G.TTT, "ttt.learning_rate", type=float, metavar="LR",
           help="learning rate"),
    Option("--ttt-embedding-lr", _G.TTT, "ttt.embedding_learning_rate", type=float,
           metavar="LR", default="--ttt-lr",
           help="learning rate of LoRA on embed_tokens/lm_head, when the targets name them"),
    Option("--ttt-schedule", _G.TTT, "ttt.schedule", choices=_values(Schedule),
           to_config=Schedule, help="learning rate after the warm-up, down to zero"),
    Option("--ttt-warmup", _G.TTT, "ttt.warmup", type=float, metavar="SHARE",
           help="share of the steps with the learning rate rising from zero"),
    Option("--ttt-rslora", _G.TTT, "ttt.rslora", action="store_true",
           default="alpha / rank",
           help="rank-stabilised LoRA: scale by alpha / sqrt(rank)"),
    Option("--ttt-batch", _G.TTT, "ttt.batch_size", type=int, metavar="N",
           help="sequences per step"),
    Option("--ttt-rank", _G.TTT, "ttt.rank", type=int, metavar="R", help="LoRA rank"),
    Option("--ttt-alpha", _G.TTT, "ttt.alpha", type=int, metavar="A", help="LoRA alpha"),
    Option("--ttt-target-modules", _G.TTT, "ttt.target_modules", metavar="NAMES",
           help="peft target modules: all-linear, or names such as q_proj,v_proj; add "
           "embed_tokens,lm_head for LoRA on the embeddings and the head"),
    Option("--scratch", _G.TTT, "scratch_dir", type=Path, metavar="DIR",
           default="OUT; the Kaggle kernel uses a folder under /tmp, never /kaggle/working",
           help="where adapters are written, as DIR/adapters"),
    Option("--no-adapter-fallback", _G.TTT, "adapter_fallback", action="store_false",
           dest="adapter_fallback",
           default="the transformers engine answers that task if it serves the adapter",
           help="an adapter vLLM does not serve leaves its task to the base model"),
    Option("--scratch-limit", _G.TTT, "scratch_limit", metavar="SIZE", to_config=parse_size,
           default=f"the scratch disk's free space at the start, less {SCRATCH_MARGIN:.0%}",
           help="bytes the adapters may hold at once (e.g. 20G): training and answering "
           "alternate in waves whose adapters fit, each wave's deleted once answered"),
    Option("--keep-adapters", _G.TTT, "keep_adapters", action="store_true",
           default="each is deleted once its task is answered and re-scored",
           help="keep every adapter"),
    Option("--ttt-augmentations", _G.TTT, "ttt.augmentations", type=int, metavar="K",
           help="augmented views per task; each gives one sequence per train pair"),
    Option("--ttt-loss", _G.TTT, "ttt.loss", choices=_values(Loss), to_config=Loss,
           help="which tokens carry loss: the held-out answer, or every output grid of the "
           "sequence, the train pairs' too"),

    Option("--engine", _G.ENGINE, "engine.backend", choices=_values(Backend),
           to_config=Backend,
           help="vllm, hf (transformers), or openai: vLLM's OpenAI-compatible servers at "
           "--endpoint"),
    Option("--endpoint", _G.ENGINE, "engine.endpoints", action="append", metavar="URL",
           to_config=tuple,
           help="with --engine openai: a server's base URL including /v1, e.g. "
           "http://127.0.0.1:8000/v1 (repeat for several; they share one queue). The API "
           f"key, if any, is read from ${API_KEY_ENV}, and sent only over https:// or to a "
           "loopback address"),
    Option("--allow-insecure-key", _G.ENGINE, "engine.allow_insecure_key",
           action="store_true",
           help=f"send ${API_KEY_ENV} to plain http:// endpoints on other machines too"),
    Option("--dtype", _G.ENGINE, "engine.dtype", choices=_values(Dtype), to_config=Dtype,
           help="auto picks float16 on GPUs without bf16 (T4), bfloat16 on newer GPUs, the "
           "checkpoint's dtype on CPU"),
    Option("--cpu-kv-cache-gib", _G.ENGINE, "engine.cpu_kv_cache_gib", type=int,
           metavar="GIB",
           help="vLLM on CPU only: KV cache size; VLLM_CPU_KVCACHE_SPACE, if set, wins"),
    Option("--max-model-len", _G.ENGINE, "engine.max_model_len", type=int,
           metavar="TOKENS", derived=True,
           default=f"{ENGINE_DEFAULTS.max_model_len}, or the model's max_position_embeddings if "
           "smaller",
           help="context length; train pairs are dropped (largest first) to fit"),
    Option("--gpu-memory-utilization", _G.ENGINE, "engine.gpu_memory_utilization",
           type=float, metavar="FRACTION", help="vLLM's share of GPU memory"),
    Option("--enforce-eager", _G.ENGINE, "engine.enforce_eager", action="store_true",
           derived=True, exclusive="start",
           default="eager for a time budget under "
           f"{format_duration(COMPILE_MIN_BUDGET)}, else compiled",
           help="skip vLLM graph compilation: faster start, slower decoding"),
    Option("--compile", _G.ENGINE, "engine.enforce_eager", action="store_false",
           dest="enforce_eager", derived=True, exclusive="start",
           help="compile vLLM's graphs (torch compile on CPU, CUDA graphs on a GPU) whatever "
           "the budget: slower start, faster decoding"),
    Option("--plan", _G.ENGINE, None, type=Path, metavar="PLAN_JSON",
           default="the budget rule of --enforce-eager",
           help="`airv plan`'s plan.json with vLLM measured both ways: start the way that "
           "leaves time for more views in this run's budget (--enforce-eager or --compile "
           "still decide)"),
    Option("--ngram-speculative-tokens", _G.ENGINE, "engine.ngram_speculative_tokens",
           type=int, metavar="K",
           help="vLLM n-gram (prompt lookup) speculative decoding with K tokens; 0 = off"),
    Option("--quantization", _G.ENGINE, "engine.quantization", metavar="METHOD",
           default="what the checkpoint's config.json declares",
           help="vLLM quantization method of a quantized checkpoint, e.g. awq, gptq, fp8; "
           "vllm backend only"),
    Option("--engine-log-level", _G.ENGINE, "engine.log_level", type=str.upper,
           choices=LOG_LEVELS,
           help="vLLM's own log level (VLLM_LOGGING_LEVEL, if set, wins); --log-level is "
           "airv's"),
    Option("--workers", _G.ENGINE, "workers", type=int, metavar="N", derived=True,
           default="one per --devices entry or visible GPU, else 1",
           help="engine processes, one per GPU"),
    Option("--devices", _G.ENGINE, "devices", metavar="IDS", derived=True,
           default="all visible GPUs, none on CPU",
           help="comma-separated CUDA device ids, one worker each, e.g. 0,1,2,3"),
    Option("--inflight", _G.ENGINE, "inflight", type=int, metavar="N",
           help="prompts each engine holds in flight, refilled as they finish; only these "
           "are lost at the deadline or a crash"),
    Option("--stall-timeout", _G.ENGINE, "stall_seconds", metavar="DURATION",
           to_config=parse_duration, shown=format_duration,
           help="an engine with work in flight that returns nothing this long is restarted"),
    Option("--max-restarts", _G.ENGINE, "max_restarts", type=int, metavar="N",
           help="engine restarts per run (death, vLLM's engine process killed, error or "
           "stall) while time remains; then the engine stays down"),

    # A property of Decoding, not a field: the flags below decide it, and --decode is
    # checked against them (validate).
    Option("--decode", _G.DECODING, "sampling.decode", choices=DECODE_MODES, derived=True,
           help="greedy; sampling (needs --temperature > 0); beam (needs --beam-width); dfs: "
           "depth-first search, every answer whose probability stays above --dfs-threshold "
           "(the ARChitects' and NVARC's decoder). Without it, the other flags decide"),
    Option("--dfs-threshold", _G.DECODING, "sampling.dfs_threshold", type=float,
           metavar="P", derived=True, default=f"off; {DEFAULT_DFS_THRESHOLD} with --decode dfs",
           help="dfs: keep answers with probability above P, in (0, 1); implies --decode dfs"),
    Option("--dfs-max-candidates", _G.DECODING, "sampling.dfs_max_candidates", type=int,
           metavar="N", help="dfs: answers kept per prompt (view), the likeliest"),
    Option("--dfs-max-nodes", _G.DECODING, "sampling.dfs_max_nodes", type=int, metavar="N",
           help="dfs: next-token distributions computed per prompt (view) before the search "
           "stops with what it found; the task cap bounds a task's time"),
    Option("--n", _G.DECODING, "sampling.n", type=int,
           help="completions per prompt; > 1 needs --temperature > 0 or --beam-width"),
    Option("--temperature", _G.DECODING, "sampling.temperature", type=float, metavar="T",
           help="0 = greedy; AIRV gets its diversity from the augmentations"),
    Option("--top-k", _G.DECODING, "sampling.top_k", type=int, metavar="K",
           help="sample from the K likeliest; 0 = off"),
    Option("--top-p", _G.DECODING, "sampling.top_p", type=float, metavar="P",
           help="nucleus sampling mass"),
    Option("--min-p", _G.DECODING, "sampling.min_p", type=float, metavar="P",
           help="drop tokens below P x the top one"),
    Option("--repetition-penalty", _G.DECODING, "sampling.repetition_penalty", type=float,
           metavar="X",
           help="1 = off; other values hurt ARC, whose answers copy the input"),
    Option("--presence-penalty", _G.DECODING, "sampling.presence_penalty", type=float,
           metavar="X",
           help="in [-2, 2], 0 = off; vllm backend only. Penalties hurt ARC: answers copy "
           "the input"),
    Option("--frequency-penalty", _G.DECODING, "sampling.frequency_penalty", type=float,
           metavar="X",
           help="in [-2, 2], 0 = off; vllm backend only. Penalties hurt ARC: answers copy "
           "the input"),
    Option("--sampling-seed", _G.DECODING, "sampling.seed", type=int, metavar="N",
           default="the engine's seed", help="seed for sampling"),
    Option("--stop", _G.DECODING, "sampling.stop", action="append", metavar="TEXT",
           to_config=tuple, help="a stop string; repeat for several"),
    Option("--beam-width", _G.DECODING, "sampling.beam_width", type=int, metavar="B",
           help="beam search with B beams (vLLM LLM.beam_search); 0 = off"),
    Option("--length-penalty", _G.DECODING, "sampling.length_penalty", type=float,
           metavar="X",
           help="beam search ranks beams by logprob / length**X; > 1 favours longer "
           "answers; needs --beam-width"),

    Option("--no-progress", _G.OUTPUT, "progress", action="store_true",
           to_config=operator.not_, help="no progress bar"),
    Option("--log-level", _G.OUTPUT, None, type=str.upper, choices=LOG_LEVELS,
           default=DEFAULT_LOG_LEVEL, help="airv's own log level; --engine-log-level is vLLM's"),
)  # fmt: skip

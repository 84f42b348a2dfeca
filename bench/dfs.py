"""Greedy against depth-first search at several thresholds, at equal views, with a model.

    python -m bench.dfs --model models/airv-demo --out bench/dfs.md

Each run is the real pipeline (vLLM unless --engine says otherwise) on the same tasks with the
same views per test input, followed by the re-scoring pass (top 4 candidates x 4
augmentations), so grid, rescore and views-nll selections are all read off one run. Reported
per run: the pool oracle (the right answer is among the candidates), best-of-2 accuracy under
each selection, completions, and the engine's time (generation plus scoring, start-up
excluded). The last rows run one threshold's search on the transformers backend too, for the
speed of the two implementations on the same work. With --ttt, the 11 ARC-AGI-1 training tasks
in the demo model's family (where test-time fine-tuning helps it) are run without and with
per-task TTT; the adapters are trained in the first TTT run and reused by the others (the
stage resumes from them), so every decoding sees the same adapters.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from airv.adapt.config import TTTConfig, TTTMode
from airv.core.tasks import Task, dump_challenges
from airv.core.voting import VoteMode
from airv.engines.config import Backend, Decoding, Dtype, EngineConfig
from airv.kaggle.local import default_tasks
from airv.run.budget import Clock
from airv.run.config import SCORES_FILE, RunConfig
from airv.run.pipeline import Run
from airv.run.predictions import group_candidates, read_predictions
from airv.run.scores import attach_scores, read_scores
from airv.tools.evaluate import Source, evaluate_candidates
from bench.common import Solutions, cpus, easy_corner, in_family_training, utc_now, write_markdown

MODES = (VoteMode.GRID, VoteMode.RESCORE, VoteMode.VIEWS_NLL)


def run_one(
    tasks: list[Task],
    solutions: Solutions,
    engine: EngineConfig,
    sampling: Decoding,
    views: int,
    out: Path,
    ttt: TTTConfig | None = None,
    adapters_from: Path | None = None,
) -> dict[str, object]:
    out.mkdir(parents=True)
    if adapters_from is not None:  # the stage resumes from these adapters
        shutil.copytree(adapters_from / "adapters", out / "adapters")
        shutil.copy(adapters_from / "ttt.jsonl", out / "ttt.jsonl")
    challenges = out / "challenges.json"
    dump_challenges(tasks, challenges)
    cfg = RunConfig(
        challenges=challenges,
        out_dir=out,
        engine=engine,
        sampling=sampling,
        first_round=views,
        per_round=views,
        max_augmentations=views,
        settle_margin=0,
        vote_mode=VoteMode.VIEWS_NLL,  # the re-scoring pass; every mode is read off the log
        progress=False,
        time_budget=4 * 3600,
        reserve=0,
        ttt=ttt or TTTConfig(),
        keep_adapters=True,  # the next runs reuse them
    )
    r = Run(cfg, clock=Clock.for_run(cfg))
    if r.execute() != 0 or r.summary.stopped_by != "done":
        raise SystemExit(f"run in {out} failed: {r.summary.error}")
    predictions, _ = read_predictions(cfg.log_path)
    scored = read_scores(out / SCORES_FILE)
    pools = {
        u: attach_scores(scored.get(u, {}), cands)
        for u, cands in group_candidates(predictions).items()
    }
    row: dict[str, object] = {}
    for mode in MODES:
        overall = evaluate_candidates(pools, solutions, mode).overall()
        row[mode.value] = overall[Source.BEST_OF_2].accuracy
        row["oracle"] = overall[Source.ORACLE].accuracy
    s = r.summary
    row["completions"] = s.completions
    row["generation_seconds"] = sum(x.seconds for x in s.rounds)
    row["scoring_seconds"] = s.scoring_seconds
    row["ttt_seconds"] = s.ttt_seconds
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--easy", type=int, default=40, help="held-out synthetic tasks, easy corner")
    p.add_argument("--arc", type=int, default=10, help="smallest ARC-AGI-1 evaluation tasks")
    p.add_argument("--views", type=int, default=8, help="augmentations per test input")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.1, 0.05])
    p.add_argument("--hf-threshold", type=float, default=0.1, help="also run on transformers")
    p.add_argument("--engine", default="vllm", choices=[b.value for b in Backend])
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--ttt", action="store_true", help="also the in-family set with per-task TTT")
    p.add_argument("--out", type=Path, default=Path("bench/dfs.md"))
    args = p.parse_args(argv)

    def engine(backend: Backend) -> EngineConfig:
        return EngineConfig(
            model=args.model,
            backend=backend,
            dtype=Dtype.FLOAT32,
            max_model_len=args.max_model_len,
            enforce_eager=True,  # ten engine start-ups: the fast start, the same for every run
        )

    sets: dict[str, tuple[list[Task], Solutions]] = {}
    if args.easy:
        sets[f"synthetic, easy corner ({args.easy})"] = easy_corner(args.easy)
    if args.arc:
        a_tasks, a_sols = default_tasks(args.arc)
        sets[f"ARC-AGI-1 eval, smallest {args.arc}"] = (a_tasks, a_sols)
    main_backend = Backend(args.engine)
    decodes: list[tuple[str, Backend, Decoding]] = [("greedy", main_backend, Decoding())]
    decodes += [
        (f"dfs p > {t:g}", main_backend, Decoding(dfs_threshold=t)) for t in args.thresholds
    ]
    if args.hf_threshold and main_backend is not Backend.HF:
        decodes.append(
            (
                f"dfs p > {args.hf_threshold:g}",
                Backend.HF,
                Decoding(dfs_threshold=args.hf_threshold),
            )
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, (tasks, sols)) in enumerate(sets.items()):
            for j, (label, backend, sampling) in enumerate(decodes):
                print(f"[dfs] {name}: {label} ({backend.value})", file=sys.stderr, flush=True)
                row = run_one(
                    tasks, sols, engine(backend), sampling, args.views, Path(tmp) / f"{k}-{j}"
                )
                rows.append((name, label, backend.value, row))
        if args.ttt:
            fam, fam_sols = in_family_training()
            trained: Path | None = None
            for ttt_on in (False, True):
                for j, (label, backend, sampling) in enumerate(decodes):
                    if backend is not main_backend:
                        continue
                    name = f"ARC-AGI-1 training, in family ({len(fam)})" + (
                        ", per-task TTT" if ttt_on else ""
                    )
                    print(f"[dfs] {name}: {label}", file=sys.stderr, flush=True)
                    out = Path(tmp) / f"ttt{int(ttt_on)}-{j}"
                    row = run_one(
                        fam,
                        fam_sols,
                        engine(backend),
                        sampling,
                        args.views,
                        out,
                        ttt=TTTConfig(mode=TTTMode.PER_TASK) if ttt_on else None,
                        adapters_from=trained if ttt_on else None,
                    )
                    if ttt_on and trained is None:
                        trained = out
                    rows.append((name, label, backend.value, row))
    lines = [
        "# Greedy against depth-first search",
        "",
        f"Written by `bench/dfs.py` on {utc_now()} "
        f"on {platform.machine()} with {cpus()} CPUs; model "
        f"`{args.model}`, {args.views} views per test input, re-scoring top 4 x 4 "
        "augmentations. Accuracy: either attempt right, per test input. Seconds: engine work, "
        "start-up excluded (vLLM with --enforce-eager). DFS keeps at most 8 answers per view "
        "(the default cap). TTT s: training, in the first TTT run only (the others reuse its "
        "adapters).",
        "",
        "| tasks | decoding | engine | pool oracle | grid | rescore | views-nll | completions "
        "| generation s | scoring s | TTT s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {label} | {eng} | {r['oracle']:.3f} | {r['grid']:.3f} | "
            f"{r['rescore']:.3f} | {r['views-nll']:.3f} | {r['completions']} | "
            f"{r['generation_seconds']:.1f} | {r['scoring_seconds']:.1f} | "
            f"{r['ttt_seconds']:.0f} |"
            for n, label, eng, r in rows
        ),
    ]
    write_markdown(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

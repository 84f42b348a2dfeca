"""Turn a Kaggle challenge file into submission.json with a fine-tuned causal LM.

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

from __future__ import annotations

import argparse

from airv.run import options as runopts

HELP = "run the pipeline: challenge file + model -> submission.json"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # the description's own line breaks
    runopts.add_run_arguments(p)


def main(args: argparse.Namespace) -> int:
    from airv.run.pipeline import run  # on demand: it would slow every `airv --help`

    runopts.configure_logging(args.log_level)
    return run(runopts.build_run_config(args))

"""One run: its config, budget, pipeline, re-scoring, predictions log, summary, CLI options."""

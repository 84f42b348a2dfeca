"""airv's benchmarks, one script per question, each run from the repository root as a module:

    python -m bench.run_bench     (`make bench`) throughput, overhead, start-up, ... per section
    python -m bench.plan_check    (`make bench`) `airv plan` against a real run
    python -m bench.demo_model    the demo model: greedy against AIRV on synthetic and ARC tasks
    python -m bench.vote_modes    grid, cell and re-scored votes; early stopping
    python -m bench.dfs           greedy against depth-first search
    python -m bench.ttt           test-time fine-tuning through the pipeline (vLLM on CPU)
    python -m bench.ttt_gpu       one TTT adapter at Qwen3-4B's shapes on a GPU

`common` holds what the scripts share; `harness` runs bench.run_bench's sections, one module
each (its measure beside its render); `runs` holds the pipeline runs the sections time.
"""

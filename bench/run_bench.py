"""`make bench`: how fast airv turns ARC tasks into answers, and where the time goes.

Each section (SECTIONS below, in report order; `--help` lists them) is one module of this
package with a measure function that returns a JSON-able dict and a render function that
writes its part of the report. After every section bench/results.json and bench/results.md
are rewritten, so a partial run keeps what it measured.

The model is built locally (airv.demo.tinymodel, random weights; or --model DIR): token counts and
the code paths are real, the answers are not. A model's own context limit is respected (vLLM
refuses a max_model_len above max_position_embeddings). Ratios are measured side by side in one
process (runs alternate), because the machine may be shared. On a CUDA machine the engines use
GPU 0.

    python -m bench.run_bench --out bench/results.md [--quick] [--sections tokens throughput]
"""

from __future__ import annotations

from collections.abc import Sequence

from bench import (
    harness,
    overhead,
    scaling,
    servers,
    speculative,
    startup,
    streaming,
    throughput,
    tokens,
)

# Every section, once, in the report's order (their headings are numbered so); they run in
# this order too.
SECTIONS: tuple[harness.Section, ...] = (
    throughput.SECTION,
    overhead.SECTION,
    tokens.SECTION,
    startup.SECTION,
    scaling.SECTION,
    speculative.SECTION,
    streaming.SECTION,
    servers.SECTION,
)


def main(argv: Sequence[str] | None = None) -> int:
    return harness.main(SECTIONS, argv, description=__doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())

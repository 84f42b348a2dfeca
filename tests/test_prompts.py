"""Tests for airv.core.prompts: layout, chat templates, the answer estimate, the length budget."""

from __future__ import annotations

import json
import string
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.core import prompt_format, prompts
from airv.core.errors import ConfigError
from airv.core.formats import FormatSpec, encode_grid, parse_grid
from airv.core.prompt_format import DEFAULT_PRESET, PromptFormat, PromptTemplate, load_preset
from airv.core.prompts import FittedPrompt, PromptTooLong
from airv.core.tasks import Pair, Task
from airv.core.types import Grid
from strategies import grids

BOS = 1


# The `default` preset with a grid spec and layout knobs; the functions under test, called
# with the (spec, template) pair these tests were written around.
def fmt(spec: FormatSpec | None = None, template: PromptTemplate | None = None) -> PromptFormat:
    return replace(
        load_preset(DEFAULT_PRESET),
        grid=spec or FormatSpec(),
        layout=template or PromptTemplate(),
    )


def render_plain(
    task: Task, i: int, spec: FormatSpec, template: PromptTemplate, *, keep: Any = None
) -> str:
    return prompt_format.render_text(fmt(spec, template), task, i, keep=keep)


def render_prompt(
    task: Task, i: int, spec: FormatSpec, template: PromptTemplate, tok: Any, *, keep: Any = None
) -> str:
    return prompts.render_prompt(task, i, fmt(spec, template), tok, keep=keep)


def fit_prompt(
    task: Task, i: int, spec: FormatSpec, template: PromptTemplate, tok: Any, max_len: int
) -> FittedPrompt | PromptTooLong:
    return prompts.fit_prompt(task, i, fmt(spec, template), tok, max_len)


def estimate_answer_tokens(task: Task, i: int, spec: FormatSpec, tok: Any) -> int:
    return prompts.estimate_answer_tokens(task, i, fmt(spec), tok)


def worst_case_answer_tokens(spec: FormatSpec, tok: Any) -> int:
    return prompts.worst_case_answer_tokens(fmt(spec), tok)


def answer_text(grid: Grid, spec: FormatSpec) -> str:
    return prompt_format.answer_text(grid, fmt(spec))


def prompt_token_ids(text: str, tok: Any) -> list[int]:
    return prompts.prompt_token_ids(text, fmt(), tok)


class PlainCharTokenizer:
    """One token per character; BOS with special tokens; no chat template."""

    chat_template: str | None = None
    eos_token_id: int | None = 2

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [ord(ch) + 10 for ch in text]
        return [BOS, *ids] if add_special_tokens else ids

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> str:
        raise AssertionError("a tokenizer without a chat template must not be asked to apply it")


class ChatCharTokenizer(PlainCharTokenizer):
    """As PlainCharTokenizer, with a jinja-free chat template that writes its own BOS."""

    chat_template = "fake"

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> str:
        assert tokenize is False
        body = "".join(f"<{m['role']}>{m['content']}<end>" for m in conversation)
        return "^" + body + ("<assistant>" if add_generation_prompt else "")


SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_hf_tokenizer(chat: bool) -> Any:
    """A character-level transformers tokenizer built locally (no downloads)."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    chars = string.digits + "\n " + string.ascii_letters + "|x:,.-_`[]()#>;/"
    vocab = {t: i for i, t in enumerate([*SPECIALS, *chars])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(r"[\s\S]"), behavior="isolated"
    )
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = tokenizers.decoders.Fuse()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def hf_plain() -> Any:
    return build_hf_tokenizer(chat=False)


@pytest.fixture(scope="module")
def hf_chat() -> Any:
    return build_hf_tokenizer(chat=True)


def square(n: int, m: int | None = None, v: int = 1) -> Grid:
    return tuple(tuple((v + r + c) % 10 for c in range(n if m is None else m)) for r in range(n))


def small_task() -> Task:
    return Task("small", (Pair(((0, 1),), ((1, 0),)),), (((1, 1),),))


def sized_task() -> Task:
    """Pairs of 2x2, 10x10 and 5x5 cells (input and output alike); test input 3x3."""
    train = tuple(Pair(square(n), square(n, v=2)) for n in (2, 10, 5))
    return Task("sized", train, (square(3),))


@st.composite
def tasks(draw: st.DrawFn, max_side: int = 8, max_train: int = 4) -> Task:
    n = draw(st.integers(1, max_train))
    train = tuple(
        Pair(draw(grids(max_side=max_side)), draw(grids(max_side=max_side))) for _ in range(n)
    )
    return Task("t", train, (draw(grids(max_side=max_side)),))


SPECS = [
    FormatSpec(),
    FormatSpec(shape_header=True, row_numbers=True),
    FormatSpec(cell_sep=" ", fence=True),
    FormatSpec(shape_header=True, row_numbers=True, cell_sep=",", row_sep=";\n", fence=True),
]


# --- layout ---


def test_plain_layout_matches_docstring() -> None:
    text = render_plain(small_task(), 0, FormatSpec(), PromptTemplate())
    assert text == "I\n01\nO\n10\n\nI\n11\nO\n"
    assert PromptTemplate.__doc__ is not None
    shown = "\n".join("        " + line if line else "" for line in text.split("\n")[:-1])
    assert shown in PromptTemplate.__doc__


def test_custom_template_and_spec() -> None:
    template = PromptTemplate(
        preamble="Solve.\n", input_label="input:", output_label="output:", pair_sep="--\n"
    )
    spec = FormatSpec(shape_header=True, cell_sep=" ")
    text = render_plain(small_task(), 0, spec, template)
    assert text == "Solve.\ninput:\n1x2\n0 1\noutput:\n1x2\n1 0\n--\ninput:\n1x2\n1 1\noutput:\n"


def test_no_chat_template_gives_plain_text() -> None:
    task, spec, template = sized_task(), FormatSpec(), PromptTemplate(system="ignored")
    plain = render_plain(task, 0, spec, template)
    assert render_prompt(task, 0, spec, template, None) == plain
    assert render_prompt(task, 0, spec, template, PlainCharTokenizer()) == plain


def test_chat_template_wraps_plain_text() -> None:
    task, spec = sized_task(), FormatSpec()
    plain = render_plain(task, 0, spec, PromptTemplate())
    tok = ChatCharTokenizer()
    assert render_prompt(task, 0, spec, PromptTemplate(), tok) == (
        f"^<user>{plain}<end><assistant>"
    )
    with_system = render_prompt(task, 0, spec, PromptTemplate(system="You solve ARC."), tok)
    assert with_system == f"^<system>You solve ARC.<end><user>{plain}<end><assistant>"


def test_real_tokenizer_chat_and_plain(hf_plain: Any, hf_chat: Any) -> None:
    task, spec, template = sized_task(), FormatSpec(), PromptTemplate(system="be exact")
    plain = render_plain(task, 0, spec, template)
    assert render_prompt(task, 0, spec, template, hf_plain) == plain
    chat = render_prompt(task, 0, spec, template, hf_chat)
    assert chat == f"<s><|system|>be exact<|end|><|user|>{plain}<|end|><|assistant|>"
    bos = hf_chat.bos_token_id
    chat_ids = prompt_token_ids(chat, hf_chat)
    plain_ids = prompt_token_ids(plain, hf_plain)
    # The chat template writes BOS itself: it must not be added a second time.
    assert chat_ids[0] == bos and chat_ids.count(bos) == 1
    assert plain_ids[0] == bos and plain_ids.count(bos) == 1
    assert len(plain_ids) == len(plain) + 1  # character-level: one token per character


@settings(max_examples=100)
@given(task=tasks(), spec=st.sampled_from(SPECS), chat=st.booleans())
def test_test_input_comes_last(task: Task, spec: FormatSpec, chat: bool) -> None:
    template = PromptTemplate(input_label="In", output_label="Out")
    tok = ChatCharTokenizer() if chat else PlainCharTokenizer()
    text = render_prompt(task, 0, spec, template, tok)
    tail = f"In\n{encode_grid(task.test[0], spec)}\nOut\n"
    assert text.endswith(tail + "<end><assistant>" if chat else tail)
    for pair in task.train:
        assert encode_grid(pair.output, spec) in text


def test_keep_selects_pairs_in_task_order() -> None:
    task, spec, template = sized_task(), FormatSpec(), PromptTemplate()
    sub = Task(task.id, (task.train[0], task.train[2]), task.test)
    assert render_plain(task, 0, spec, template, keep=[2, 0]) == render_plain(
        sub, 0, spec, template
    )
    assert render_plain(task, 0, spec, template, keep=[]) == "I\n123\n234\n345\nO\n"


@pytest.mark.parametrize("keep", [[0, 0], [3], [-1], [0, 5]])
def test_bad_keep_raises(keep: list[int]) -> None:
    with pytest.raises(ValueError, match="sized"):
        render_plain(sized_task(), 0, FormatSpec(), PromptTemplate(), keep=keep)


def test_bad_test_index_raises() -> None:
    with pytest.raises(ValueError, match="test index 1"):
        render_plain(small_task(), 1, FormatSpec(), PromptTemplate())


@settings(max_examples=100)
@given(grid=grids(), spec=st.sampled_from(SPECS))
def test_answer_text_is_the_encoding(grid: Grid, spec: FormatSpec) -> None:
    assert answer_text(grid, spec) == encode_grid(grid, spec)
    assert parse_grid(answer_text(grid, spec), spec) == grid


# --- answer estimate ---


def true_answer_tokens(grid: Grid, spec: FormatSpec, tok: Any) -> int:
    return len(tok.encode(answer_text(grid, spec), add_special_tokens=False)) + 1  # + EOS


@st.composite
def tasks_with_answer(draw: st.DrawFn) -> tuple[Task, Grid]:
    """A task and a test output no larger than the train outputs, with a test input no
    larger than the train inputs (the case where the estimate must be an upper bound)."""
    task = draw(tasks(max_side=12))
    in_r = max(len(p.input) for p in task.train)
    in_c = max(len(p.input[0]) for p in task.train)
    out_r = max(len(p.output) for p in task.train)
    out_c = max(len(p.output[0]) for p in task.train)
    test_in = tuple(row[:in_c] for row in task.test[0][:in_r])
    test_out = tuple(row[:out_c] for row in draw(grids(max_side=12))[:out_r])
    return Task(task.id, task.train, (test_in,)), test_out


@settings(max_examples=150)
@given(case=tasks_with_answer(), spec=st.sampled_from(SPECS))
def test_estimate_bounds_the_answer(case: tuple[Task, Grid], spec: FormatSpec) -> None:
    task, test_out = case
    tok = PlainCharTokenizer()
    estimate = estimate_answer_tokens(task, 0, spec, tok)
    assert true_answer_tokens(test_out, spec, tok) <= estimate
    assert estimate <= worst_case_answer_tokens(spec, tok)


@settings(max_examples=30)
@given(case=tasks_with_answer(), spec=st.sampled_from(SPECS))
def test_estimate_bounds_the_answer_real_tokenizer(
    case: tuple[Task, Grid], spec: FormatSpec, hf_chat: Any
) -> None:
    task, test_out = case
    estimate = estimate_answer_tokens(task, 0, spec, hf_chat)
    assert true_answer_tokens(test_out, spec, hf_chat) <= estimate
    assert estimate <= worst_case_answer_tokens(spec, hf_chat)


@pytest.mark.parametrize("spec", SPECS)
def test_worst_case_is_a_30x30_answer(spec: FormatSpec) -> None:
    tok = PlainCharTokenizer()
    assert worst_case_answer_tokens(spec, tok) == len(encode_grid(square(30), spec)) + 1


def test_estimate_is_small_for_small_tasks() -> None:
    tok, spec = PlainCharTokenizer(), FormatSpec()
    task = Task("t", (Pair(square(3), square(3)), Pair(square(2), square(2))), (square(3),))
    estimate = estimate_answer_tokens(task, 0, spec, tok)
    assert true_answer_tokens(square(3), spec, tok) <= estimate < 30


def test_estimate_follows_the_documented_rule() -> None:
    # Character-level: a 3x3 answer is 11 tokens; + EOS = 12; + 10% margin (1) + 4 = 17.
    tok, spec = PlainCharTokenizer(), FormatSpec()
    task = Task("t", (Pair(square(2), square(3)),), (square(2),))
    assert estimate_answer_tokens(task, 0, spec, tok) == 17


def test_estimate_scales_with_a_larger_test_input() -> None:
    tok, spec = PlainCharTokenizer(), FormatSpec()
    train = (Pair(square(3), square(3)), Pair(square(2, 3), square(2, 3)))
    same = estimate_answer_tokens(Task("t", train, (square(3),)), 0, spec, tok)
    wider = estimate_answer_tokens(Task("t", train, (square(3, 9),)), 0, spec, tok)
    double = estimate_answer_tokens(Task("t", train, (square(6),)), 0, spec, tok)
    assert same < wider and same < double
    assert double >= true_answer_tokens(square(6), spec, tok)
    assert wider >= true_answer_tokens(square(3, 9), spec, tok)


def test_estimate_is_capped() -> None:
    tok, spec = PlainCharTokenizer(), FormatSpec()
    train = (Pair(square(1), square(10)),)
    task = Task("t", train, (square(30),))
    assert estimate_answer_tokens(task, 0, spec, tok) == worst_case_answer_tokens(spec, tok)
    no_train = Task("t", (), (square(2),))
    assert estimate_answer_tokens(no_train, 0, spec, tok) == worst_case_answer_tokens(spec, tok)


# --- fitting into max_model_len ---


def n_tokens(task: Task, keep: list[int], tok: Any, spec: FormatSpec = SPECS[0]) -> int:
    text = render_prompt(task, 0, spec, PromptTemplate(), tok, keep=keep)
    return len(prompt_token_ids(text, tok))


@pytest.mark.parametrize("chat", [False, True])
def test_fit_keeps_everything_when_it_fits(chat: bool) -> None:
    task, spec, template = sized_task(), FormatSpec(), PromptTemplate()
    tok = ChatCharTokenizer() if chat else PlainCharTokenizer()
    fitted = fit_prompt(task, 0, spec, template, tok, 100_000)
    assert isinstance(fitted, FittedPrompt)
    assert fitted.dropped == () and fitted.n_train == 3
    assert fitted.text == render_prompt(task, 0, spec, template, tok)
    assert fitted.token_ids == tok.encode(fitted.text, add_special_tokens=not chat)
    assert fitted.max_answer_tokens == estimate_answer_tokens(task, 0, spec, tok)


@pytest.mark.parametrize("chat", [False, True])
def test_fit_drops_the_largest_pair_first(chat: bool, hf_plain: Any, hf_chat: Any) -> None:
    task, spec, template = sized_task(), FormatSpec(), PromptTemplate()
    tok = hf_chat if chat else hf_plain
    answer = estimate_answer_tokens(task, 0, spec, tok)
    all_len = n_tokens(task, [0, 1, 2], tok) + answer

    fitted = fit_prompt(task, 0, spec, template, tok, all_len - 1)
    assert isinstance(fitted, FittedPrompt)
    assert fitted.dropped == (1,) and fitted.n_train == 2  # the 10x10 pair
    assert fitted.text == render_prompt(task, 0, spec, template, tok, keep=[0, 2])
    assert len(fitted.token_ids) + fitted.max_answer_tokens <= all_len - 1

    just = n_tokens(task, [0], tok) + answer
    fitted = fit_prompt(task, 0, spec, template, tok, just)
    assert isinstance(fitted, FittedPrompt)
    assert fitted.dropped == (1, 2) and fitted.n_train == 1
    assert len(fitted.token_ids) + fitted.max_answer_tokens == just


def test_impossible_task_is_reported() -> None:
    task, spec, template, tok = sized_task(), FormatSpec(), PromptTemplate(), PlainCharTokenizer()
    answer = estimate_answer_tokens(task, 0, spec, tok)
    one_pair = n_tokens(task, [0], tok)
    result = fit_prompt(task, 0, spec, template, tok, one_pair + answer - 1)
    assert result == PromptTooLong(
        task_id="sized",
        test_index=0,
        prompt_tokens=one_pair,
        needed=one_pair + answer,
        max_model_len=one_pair + answer - 1,
    )


def test_fit_rejects_nonpositive_length() -> None:
    with pytest.raises(ValueError):
        fit_prompt(small_task(), 0, FormatSpec(), PromptTemplate(), PlainCharTokenizer(), 0)


@settings(max_examples=100)
@given(task=tasks(max_side=10, max_train=5), spec=st.sampled_from(SPECS), data=st.data())
def test_fit_invariants(task: Task, spec: FormatSpec, data: st.DataObject) -> None:
    tok = ChatCharTokenizer()
    answer = estimate_answer_tokens(task, 0, spec, tok)
    everything = n_tokens(task, list(range(len(task.train))), tok, spec) + answer
    max_len = data.draw(st.integers(1, everything + 5))
    result = fit_prompt(task, 0, spec, PromptTemplate(), tok, max_len)

    def cells(i: int) -> int:
        p = task.train[i]
        return len(p.input) * len(p.input[0]) + len(p.output) * len(p.output[0])

    # Largest first (input + output cells); ties: the later pair first.
    order = sorted(range(len(task.train)), key=lambda i: (cells(i), i), reverse=True)
    if isinstance(result, PromptTooLong):
        smallest = order[-1]
        assert result.prompt_tokens == n_tokens(task, [smallest], tok, spec)
        assert result.needed == result.prompt_tokens + answer > max_len
        return
    assert len(result.token_ids) + result.max_answer_tokens <= max_len
    assert result.token_ids == prompt_token_ids(result.text, tok)
    assert result.dropped == tuple(order[: len(result.dropped)])
    assert result.n_train == len(task.train) - len(result.dropped) >= 1
    kept = sorted(set(range(len(task.train))) - set(result.dropped))
    assert result.text == render_prompt(task, 0, spec, PromptTemplate(), tok, keep=kept)
    if result.dropped:  # no pair was dropped that could have stayed
        assert n_tokens(task, [*kept, result.dropped[-1]], tok, spec) + answer > max_len


# --- PromptTemplate JSON ---


def test_template_json_round_trip() -> None:
    template = PromptTemplate(preamble="Hi\n", input_label="in", pair_sep="", system="sys")
    assert PromptTemplate.from_dict(json.loads(json.dumps(template.to_dict()))) == template
    assert PromptTemplate.from_dict({}) == PromptTemplate()


def test_template_errors() -> None:
    with pytest.raises(ConfigError, match="inputlabel"):
        PromptTemplate.from_dict({"inputlabel": "x"})
    with pytest.raises(ConfigError, match="system"):
        PromptTemplate.from_dict({"system": None})
    with pytest.raises(ConfigError):
        PromptTemplate(output_label="")


# -- where the train outputs lie in a prompt's tokens (TTT's all-outputs loss) --------------


@pytest.fixture(scope="module")
def merging_tokenizer() -> Any:
    """A byte-level BPE trained on ARC-like text: its tokens merge digits, newlines and labels,
    so they straddle the edges of the grids (the hard case for placing outputs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "I\n0120\n3345\nO\n1200\n\nI\n77\n80\nO\n08\n",
        "<|im_start|>user\n012\n340<|im_end|><|im_start|>assistant\n5509\n",
        "```grid\n0 1 2\n3 4 5\n```\n[[0, 1], [2, 3]]\n",
    ] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(prompt_format.preset_names()),
    st.lists(st.tuples(grids(max_side=4), grids(max_side=4)), min_size=1, max_size=3),
    grids(max_side=4),
    st.data(),
)
def test_output_spans_cover_each_train_output_and_the_token_after_it(
    merging_tokenizer: Any,
    preset: str,
    pairs: list[tuple[Grid, Grid]],
    test: Grid,
    data: st.DataObject,
) -> None:
    tok = merging_tokenizer
    f = prompts.for_tokenizer(load_preset(preset), tok)
    task = Task("spans", tuple(Pair(i, o) for i, o in pairs), (test,))
    # A context that forces some pairs out: the spans follow the pairs that were kept.
    max_len = data.draw(st.sampled_from([4096, 300, 150]))
    fitted = prompts.fit_prompt(task, 0, f, tok, max_len)
    if not isinstance(fitted, FittedPrompt):
        return
    spans = prompts.output_token_spans(task, 0, f, tok, fitted)
    kept = [p for i, p in enumerate(task.train) if i not in fitted.dropped]
    assert len(spans) == len(kept) == fitted.n_train
    ids = fitted.token_ids
    ends = [0]
    for (start, end), pair in zip(spans, kept, strict=True):
        assert ends[-1] <= start < end <= len(ids)
        ends.append(end)
        covered = tok.decode(ids[start:end], clean_up_tokenization_spaces=False)
        assert encode_grid(pair.output, f.grid) in covered


def test_output_spans_on_a_one_token_per_character_tokenizer_are_exact(tmp_path: Any) -> None:
    from airv.demo.tinymodel import CHARACTERS, build_tokenizer

    tok = build_tokenizer(tmp_path, CHARACTERS)
    f = prompts.for_tokenizer(load_preset(DEFAULT_PRESET), tok)
    task = Task("exact", (Pair(((1, 2),), ((3,), (4,))), Pair(((5,),), ((6, 7),))), (((8,),),))
    fitted = prompts.fit_prompt(task, 0, f, tok, 4096)
    assert isinstance(fitted, FittedPrompt)
    spans = prompts.output_token_spans(task, 0, f, tok, fitted)
    got = [tok.decode(fitted.token_ids[a:b]) for a, b in spans]
    # Each output's text, then the one token that ends it (here the newline after the grid).
    assert got == ["3\n4\n", "67\n"]


def test_a_template_that_alters_the_outputs_cannot_be_placed(merging_tokenizer: Any) -> None:
    task = Task("twice", (Pair(((1,),), ((2,),)), Pair(((3,),), ((4,),))), (((5,),),))
    base = load_preset("nvarc")
    for body in ("{{ pair.output }}{{ pair.output }}", "{{ pair.output | replace('0', '') }}"):
        source = (
            "{% for pair in train %}{{ pair.input }}\n" + body + "\n{% endfor %}{{ test.input }}\n"
        )
        f = prompts.for_tokenizer(replace(base, template=source), merging_tokenizer)
        fitted = prompts.fit_prompt(task, 0, f, merging_tokenizer, 4096)
        assert isinstance(fitted, FittedPrompt)
        with pytest.raises(ConfigError, match="--ttt-loss answer"):
            prompts.output_token_spans(task, 0, f, merging_tokenizer, fitted)

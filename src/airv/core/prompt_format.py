"""A model's prompt format, as data: how a task becomes the exact prompt text, and how the
answer the model is trained to emit reads.

A model only answers well in the layout it was trained on, so the format ships beside the
model (`airv.json`) or is one of the presets shipped with airv (`airv/core/presets/`, one
JSON file and one Jinja2 template each). A `PromptFormat` is:

- `grid`: how a grid is written (`FormatSpec`: row numbers, shape header, fence, separators,
  alphabet, brackets);
- `template`: a Jinja2 template (the language of Hugging Face chat templates) that renders the
  whole prompt text, chat wrapper included, over `train` (pairs with `.input` / `.output`
  grid texts), `test.input`, `bos`, `eos` and the `layout` knobs. The prompt ends exactly
  where the model's answer begins;
- `answer_prefix`: the start of the answer's grid text that the prompt already holds (a
  pre-filled assistant turn, as arc24's "```grid"), so the answer is the rest;
- the end of the answer: the tokenizer's EOS token (`eos` is the original model's EOS text,
  used when no tokenizer is at hand).

The `default` preset is airv's own layout (`PromptTemplate`'s labels, grids as `FormatSpec`
says) and, unlike the others, is wrapped in the tokenizer's chat template when the tokenizer
has one (`chat: true`). Generation, re-scoring and training sequences all render through
`airv.core.prompts`, which uses only this module: a format cannot differ between them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from airv.core.errors import ConfigError, InputError
from airv.core.formats import FormatSpec, Rejection, checked_fields, encode_grid, parse_grid
from airv.core.jsonio import read_config_object
from airv.core.tasks import Pair, Task
from airv.core.types import Grid

# A file of this name in the model directory states the model's prompt format: a preset
# name, a full format, or a preset with some fields overridden (see `PromptFormat.from_dict`).
MODEL_PROMPT_FILE = "airv.json"
DEFAULT_PRESET = "default"
_PRESET_PACKAGE = "airv.core"
_PRESET_DIR = "presets"


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """The knobs of airv's own layout (the `default` preset's template reads them; other
    templates may). JSON-serialisable, to ship next to a model.

    With train pairs p1..pn and test input t (grids written by `encode_grid`)::

        {preamble}{input_label}
        {p1.input}
        {output_label}
        {p1.output}
        {pair_sep}...{input_label}
        {t}
        {output_label}
        <- the prompt ends here, after the newline; the answer is `answer_text`, then EOS

    i.e. every pair is `{input_label}\\n{in}\\n{output_label}\\n{out}\\n` followed by
    `pair_sep`, and the test input is written the same way up to and including the output
    label's newline. `preamble` is written as is (end it with "\\n" if it is a line). With the
    defaults and the default FormatSpec, one 1x2 train pair and a 1x2 test input read::

        I
        01
        O
        10

        I
        11
        O

    `system` is the system message when the tokenizer has a chat template ("" = none); the
    whole plain text above is then the one user message.
    """

    preamble: str = ""
    input_label: str = "I"
    output_label: str = "O"
    pair_sep: str = "\n"
    system: str = ""

    def __post_init__(self) -> None:
        if not self.input_label or not self.output_label:
            raise ConfigError("prompt template: input_label and output_label must not be empty")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "prompt template") -> PromptTemplate:
        return cls(**checked_fields(cls, data, source=source))


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """Everything that turns a task into prompt text and an answer into text, and back."""

    name: str = DEFAULT_PRESET
    template: str = ""  # Jinja2 source; set by the preset or the user's format
    grid: FormatSpec = field(default_factory=FormatSpec)
    layout: PromptTemplate = field(default_factory=PromptTemplate)
    # Wrap the rendered text as the user message of the tokenizer's chat template, when the
    # tokenizer has one (airv's own default); presets that write their own wrapper say false.
    chat: bool = False
    answer_prefix: str = ""  # the answer's grid text starts with this; the prompt ends with it
    answer_suffix: str = ""  # written after the answer's grid, before EOS (marc: "#")
    eos: str = "</s>"  # the original model's EOS text; the tokenizer's replaces it when known
    bos: str = ""  # BOS text the template writes itself (then add_special_tokens is false)
    # Whether tokenising the prompt adds the tokenizer's special tokens (its BOS). None: only
    # when no chat template wrapped the text (a chat template writes its own BOS).
    add_special_tokens: bool | None = None
    source: str = ""  # where the format comes from: the repository and file it reproduces

    def __post_init__(self) -> None:
        if not self.template:
            raise ConfigError(f"prompt format {self.name!r}: no template")
        if self.answer_prefix and not self.answer_prefix.strip():
            raise ConfigError(f"prompt format {self.name!r}: answer_prefix is only whitespace")

    @property
    def compiled(self) -> jinja2.Template:
        return _compile(self.template, self.name)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["grid"] = self.grid.to_dict()
        d["layout"] = self.layout.to_dict()
        return d

    @classmethod
    def from_dict(
        cls, data: Mapping[str, object], *, source: str, base_dir: Path | None = None
    ) -> PromptFormat:
        """A format from a JSON object (an airv.json, a --format file or a preset file).

        `preset` names a preset to start from (default: `default`); every other key overrides
        it: `grid` (or the older name `format`): FormatSpec fields; `layout` (or `template` as
        an object, the older form): PromptTemplate fields; `template`: the Jinja2 source;
        `template_file`: a file holding it, relative to the JSON file; and the scalar fields
        of PromptFormat. Unknown keys are errors naming `source`.
        """
        data = dict(data)
        preset = data.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"{source}: 'preset' must be a preset name, e.g. {DEFAULT_PRESET!r}")
        base = load_preset(preset or DEFAULT_PRESET) if preset != "" else None
        kwargs: dict[str, Any] = {} if base is None else _fields(base)
        if "format" in data:  # the older name of `grid`
            if "grid" in data:
                raise ConfigError(f"{source}: give 'grid' or its older name 'format', not both")
            data["grid"] = data.pop("format")
        if isinstance(data.get("template"), Mapping):  # the older form: the layout knobs
            if "layout" in data:
                raise ConfigError(f"{source}: give 'layout' or an object 'template', not both")
            data["layout"] = data.pop("template")
        if "grid" in data:
            kwargs["grid"] = FormatSpec.from_dict(data.pop("grid"), source=f"{source}: grid")
        if "layout" in data:
            kwargs["layout"] = PromptTemplate.from_dict(
                data.pop("layout"), source=f"{source}: layout"
            )
        if "template_file" in data:
            name = data.pop("template_file")
            if "template" in data or not isinstance(name, str):
                raise ConfigError(
                    f"{source}: 'template_file' must be a file name, without 'template'"
                )
            folder = (base_dir or Path(".")).resolve()
            path = (folder / name).resolve()
            if not path.is_relative_to(folder):
                # A model folder is someone else's data: it may not read files outside itself.
                raise ConfigError(
                    f"{source}: 'template_file' {name!r} points outside the format file's "
                    f"folder {folder}"
                )
            try:
                kwargs["template"] = path.read_text(encoding="utf-8")
            except OSError as exc:
                why = exc.strerror or exc
                raise ConfigError(f"{source}: cannot read the template {path}: {why}") from exc
        scalars = checked_fields(_Scalars, data, source=source)
        kwargs.update(scalars)
        if base is not None and "name" not in scalars and kwargs != _fields(base):
            kwargs["name"] = f"{base.name}+{Path(source).name}"
        try:
            fmt = cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        _check_template(fmt, source)
        return fmt


@dataclass(frozen=True, slots=True)
class _Scalars:
    """The JSON-scalar fields of PromptFormat, for `checked_fields`."""

    name: str = ""
    template: str = ""
    chat: bool = False
    answer_prefix: str = ""
    answer_suffix: str = ""
    eos: str = ""
    bos: str = ""
    add_special_tokens: bool = False
    source: str = ""


def _fields(fmt: PromptFormat) -> dict[str, Any]:
    return {f: getattr(fmt, f) for f in PromptFormat.__dataclass_fields__}


_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    # As Hugging Face renders chat templates: a block tag alone on its line leaves no line
    # behind; the last newline of the template is kept (it is part of the prompt).
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
    autoescape=False,
)


@functools.lru_cache(maxsize=64)
def _compile(source: str, name: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"prompt format {name!r}: template line {exc.lineno}: {exc.message}"
        ) from None


def _check_template(fmt: PromptFormat, source: str) -> None:
    """Render a probe task before any run starts: a template that cannot render it, or an
    answer that does not read back, is a usage error naming the file."""
    problem = probe_check(fmt)
    if problem is not None:
        raise ConfigError(f"{source}: prompt format {fmt.name!r}: {problem}")


# -- text: prompt, answer, and the answer read back ----------------------------------------


@dataclass(frozen=True, slots=True)
class _PairText:
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class _TestText:
    input: str


# Stands in for the k-th kept train output when a prompt is rendered to find where the outputs
# lie (`output_marks`): private-use code points, which no grid text or template holds.
OUTPUT_MARK = re.compile("\ue000([0-9]+)\ue001")


def render_text(
    fmt: PromptFormat,
    task: Task,
    test_index: int,
    *,
    keep: Sequence[int] | None = None,
    mark_outputs: bool = False,
) -> str:
    """The template rendered for test input `test_index` with the train pairs `keep` (all if
    None, always in their order in `task.train`): the prompt text before any chat wrapper.
    With `mark_outputs`, the k-th kept pair's output is written as a mark (`OUTPUT_MARK`).
    Raises jinja2.TemplateError when the template fails on this task."""
    test = query_input(task, test_index)
    kept = kept_indices(task, keep)
    enc = functools.partial(encode_grid, spec=fmt.grid)

    def output(k: int, i: int) -> str:
        return f"\ue000{k}\ue001" if mark_outputs else enc(task.train[i].output)

    return fmt.compiled.render(
        train=[_PairText(enc(task.train[i].input), output(k, i)) for k, i in enumerate(kept)],
        test=_TestText(enc(test)),
        bos=fmt.bos,
        eos=fmt.eos,
        **fmt.layout.to_dict(),
    )


def answer_text(grid: Grid, fmt: PromptFormat) -> str:
    """What the model is trained to write for `grid` after the prompt, before its end (EOS):
    the grid's text without the `answer_prefix` that the prompt already ends with, then the
    `answer_suffix`."""
    text = encode_grid(grid, fmt.grid)
    if not text.startswith(fmt.answer_prefix):
        raise ConfigError(
            f"prompt format {fmt.name!r}: a grid's text {text[:30]!r} does not start with "
            f"answer_prefix {fmt.answer_prefix!r}"
        )
    return text[len(fmt.answer_prefix) :] + fmt.answer_suffix


def parse_answer(text: str, fmt: PromptFormat) -> Grid | Rejection:
    """The grid of a completion (the text after the prompt), strictly; never raises. The
    end marker (the EOS text), if the engine left it in, is not part of the answer."""
    body = text.rstrip()
    if fmt.eos and body.endswith(fmt.eos):
        body = body[: -len(fmt.eos)].rstrip()
    suffix = fmt.answer_suffix.strip()
    if suffix and body.endswith(suffix):
        body = body[: -len(suffix)]
    return parse_grid(fmt.answer_prefix + body, fmt.grid)


# A small task every template must render, and whose answer must read back.
PROBE_TASK = Task(
    "probe000",
    train=(
        Pair(((1, 2), (3, 0)), ((2, 1), (0, 3))),
        Pair(((5,),), ((5,),)),
    ),
    test=(((0, 7, 8),),),
)
PROBE_ANSWER: Grid = ((8, 7, 0),)  # the probe task's test output


def probe_check(fmt: PromptFormat) -> str | None:
    """Why `fmt` cannot be used (its template fails on a small task, the prompt does not end
    with the answer's prefix, or an answer does not read back), or None."""
    try:
        prompt = render_text(fmt, PROBE_TASK, 0)
        answer = answer_text(PROBE_ANSWER, fmt)
    except (jinja2.TemplateError, ConfigError) as exc:
        return f"the template fails on a probe task: {type(exc).__name__}: {exc}"
    if fmt.answer_prefix and not prompt.endswith(fmt.answer_prefix):
        return f"the prompt does not end with answer_prefix {fmt.answer_prefix!r}"
    parsed = parse_answer(answer + fmt.eos, fmt)
    if parsed != PROBE_ANSWER:
        return f"an answer does not read back: {answer!r} -> {parsed}"
    return None


def query_input(task: Task, test_index: int) -> Grid:
    if not 0 <= test_index < len(task.test):
        raise ValueError(
            f"task {task.id}: test index {test_index} out of range ({len(task.test)} test inputs)"
        )
    return task.test[test_index]


def kept_indices(task: Task, keep: Sequence[int] | None) -> list[int]:
    if keep is None:
        return list(range(len(task.train)))
    kept = sorted(set(keep))
    if len(kept) != len(keep) or (kept and not 0 <= kept[0] <= kept[-1] < len(task.train)):
        raise ValueError(
            f"task {task.id}: train indices {list(keep)} are not distinct indices "
            f"into {len(task.train)} train pairs"
        )
    return kept


# -- presets -------------------------------------------------------------------------------


def preset_names() -> list[str]:
    folder = resources.files(_PRESET_PACKAGE).joinpath(_PRESET_DIR)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


@functools.cache
def load_preset(name: str) -> PromptFormat:
    """A preset shipped with airv; ConfigError (a usage error) for an unknown name."""
    if name not in preset_names():
        raise ConfigError(f"unknown format preset {name!r}; known: {', '.join(preset_names())}")
    folder = resources.files(_PRESET_PACKAGE).joinpath(_PRESET_DIR)
    with resources.as_file(folder) as path:
        data = read_config_object(path / f"{name}.json", f"format preset {name}")
        data.setdefault("name", name)
        # A preset is complete in itself: it starts from nothing, not from `default`.
        return PromptFormat.from_dict(
            {"preset": "", **data}, source=str(path / f"{name}.json"), base_dir=path
        )


def resolve_format(
    *, model: Path | None = None, preset: str | None = None, format_file: Path | None = None
) -> PromptFormat:
    """The run's prompt format. Precedence: `--format FILE`, then `--format-preset NAME`,
    then the model's airv.json, then the `default` preset."""
    if format_file is not None:
        if not format_file.exists():
            raise InputError("format file not found", path=format_file)
        return read_format_file(format_file)
    if preset is not None:
        return load_preset(preset)
    if model is not None and (model / MODEL_PROMPT_FILE).exists():
        return read_format_file(model / MODEL_PROMPT_FILE)
    return load_preset(DEFAULT_PRESET)


# A model's airv.json may also name the run's recipe (airv.run.recipes): not a format field.
RECIPE_KEY = "recipe"


def read_format_file(path: Path) -> PromptFormat:
    data = read_config_object(path, "format file")
    data.pop(RECIPE_KEY, None)
    return PromptFormat.from_dict(data, source=str(path), base_dir=path.parent)


def with_tokenizer_eos(fmt: PromptFormat, eos: str | None) -> PromptFormat:
    """The format with the model's own EOS text (the tokenizer's) in place of the preset's."""
    return fmt if not eos or eos == fmt.eos else replace(fmt, eos=eos)

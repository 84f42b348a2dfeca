"""Prompt formats as data: loading, precedence, bad input, and `airv prompt`.

The presets' own byte-for-byte fixtures are in tests/test_presets.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airv.cli import main
from airv.core.errors import ConfigError, InputError
from airv.core.prompt_format import (
    DEFAULT_PRESET,
    MODEL_PROMPT_FILE,
    PromptFormat,
    PromptTemplate,
    load_preset,
    preset_names,
    read_format_file,
    render_text,
    resolve_format,
)
from airv.core.tasks import Pair, Task, dump_challenges

TASK = Task("t1", (Pair(((1, 2),), ((2, 1),)),), (((3, 4),),))


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_every_preset_loads_and_passes_its_probe() -> None:
    assert DEFAULT_PRESET in preset_names()
    for name in preset_names():
        fmt = load_preset(name)  # the probe check runs on load
        assert fmt.name == name
        assert fmt.source, f"preset {name} does not say what it reproduces"


def test_default_preset_is_the_old_layout() -> None:
    assert render_text(load_preset(DEFAULT_PRESET), TASK, 0) == "I\n12\nO\n21\n\nI\n34\nO\n"


def test_precedence_file_then_preset_then_model_then_default(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    other = next(n for n in preset_names() if n != DEFAULT_PRESET)
    file = _write(tmp_path / "fmt.json", {"layout": {"input_label": "IN"}})
    assert resolve_format(model=model).name == DEFAULT_PRESET  # nothing stated
    _write(model / MODEL_PROMPT_FILE, {"preset": other})
    assert resolve_format(model=model).name == other
    assert resolve_format(model=model, preset=DEFAULT_PRESET).name == DEFAULT_PRESET
    chosen = resolve_format(model=model, preset=other, format_file=file)
    assert chosen.layout.input_label == "IN"


def test_older_airv_json_fields_still_work(tmp_path: Path) -> None:
    path = _write(
        tmp_path / MODEL_PROMPT_FILE,
        {"format": {"shape_header": True}, "template": {"input_label": "In"}},
    )
    fmt = read_format_file(path)
    assert fmt.grid.shape_header and fmt.layout == PromptTemplate(input_label="In")
    assert render_text(fmt, TASK, 0).startswith("In\n1x2\n12\n")


def test_a_full_format_with_its_own_template_file(tmp_path: Path) -> None:
    (tmp_path / "mine.jinja").write_text(
        "{% for p in train %}<in>{{ p.input }}<out>{{ p.output }}{{ eos }}{% endfor %}"
        "<in>{{ test.input }}<out>"
    )
    path = _write(
        tmp_path / "mine.json",
        {"preset": "", "name": "mine", "template_file": "mine.jinja", "eos": "<e>"},
    )
    fmt = read_format_file(path)
    assert render_text(fmt, TASK, 0) == "<in>12<out>21<e><in>34<out>"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"preset": "nope"}, "unknown format preset 'nope'"),
        ({"colour": 3}, "unknown key 'colour'"),
        ({"grid": {"cell_sep": 5}}, "cell_sep"),
        ({"template": "{% for p in train %}"}, "template line"),  # a syntax error
        ({"template": "{{ nothing.here }}"}, "fails on a probe task"),  # fails to render
        ({"answer_prefix": "```"}, "answer_prefix"),  # the prompt does not end with it
        ({"template_file": "missing.jinja"}, "cannot read the template"),
        ({"template_file": "../outside.jinja"}, "points outside the format file's folder"),
        ({"template_file": "/etc/hostname"}, "points outside the format file's folder"),
        ({"template_file": "sub/../../outside.jinja"}, "points outside the format file's"),
    ],
)
def test_bad_formats_are_usage_errors_naming_the_file(
    tmp_path: Path, data: dict[str, object], match: str
) -> None:
    (tmp_path / "outside.jinja").write_text("<in>{{ test.input }}<out>")  # exists, outside
    (tmp_path / "fmt").mkdir()
    path = _write(tmp_path / "fmt" / "bad.json", data)
    with pytest.raises(ConfigError, match=match) as info:
        read_format_file(path)
    assert str(path) in str(info.value) or "nope" in str(info.value)


def test_bad_format_exits_2_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ch = tmp_path / "ch.json"
    dump_challenges([TASK], ch)
    bad = _write(tmp_path / "bad.json", {"template": "{{ nothing.here }}"})
    code = main(["prompt", "--challenges", str(ch), "--task", "t1", "--format", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "probe task" in err
    code = main(["prompt", "--challenges", str(ch), "--task", "t1", "--format-preset", "x"])
    assert code == 2 and "unknown format preset 'x'" in capsys.readouterr().err


def test_airv_prompt_prints_exactly_the_prompt_and_the_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ch = tmp_path / "arc-agi_x_challenges.json"
    dump_challenges([TASK], ch)
    (tmp_path / "arc-agi_x_solutions.json").write_text('{"t1": [[[4, 3]]]}')
    base = ["prompt", "--challenges", str(ch), "--task", "t1", "--format-preset", "default"]
    assert main(base) == 0
    assert capsys.readouterr().out == "I\n12\nO\n21\n\nI\n34\nO\n"  # no newline added
    assert main([*base, "--answer", "solution"]) == 0
    assert capsys.readouterr().out == "43" + load_preset(DEFAULT_PRESET).eos
    assert main([*base, "--answer", "[[1, 1]]"]) == 0
    assert capsys.readouterr().out.startswith("11")
    assert main([*base, "--answer", "[[1, 12]]"]) == 2
    assert main([*base, "--test-index", "3"]) == 2
    assert main(["prompt", "--challenges", str(ch), "--task", "t1"]) == 2  # no format named


def test_a_template_failing_on_one_task_costs_only_that_task(tmp_path: Path) -> None:
    """A template may fail on some task during a run (here: one with three train pairs);
    the pipeline gives that task the fallback and goes on (tests/test_pipeline.py runs it
    through an engine); this checks the failure is the template's own error."""
    fmt = PromptFormat.from_dict(
        {
            "template": "{% if train|length > 2 %}{{ too.many }}{% endif %}"
            "{% for p in train %}I\n{{ p.input }}\nO\n{{ p.output }}\n{% endfor %}"
            "I\n{{ test.input }}\nO\n"
        },
        source="inline",
    )
    big = Task("t3", TASK.train * 3, TASK.test)
    assert render_text(fmt, TASK, 0).endswith("I\n34\nO\n")
    with pytest.raises(Exception, match="too"):
        render_text(fmt, big, 0)


def test_missing_format_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="format file not found"):
        resolve_format(format_file=tmp_path / "none.json")

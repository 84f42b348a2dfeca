"""`airv run`'s option table (airv.run.optiontable.OPTIONS) against everything made or written from
it: the parser and its --help, the config dataclasses, the recipes, the Kaggle config example
and the README's option tables. A drift between any of them fails here."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airv.cli import build_parser
from airv.core.errors import ConfigError
from airv.core.tasks import Pair, Task, dump_challenges
from airv.core.units import format_duration, parse_duration
from airv.run import options as runopts
from airv.run.option import RUN_DEFAULTS, Group, Option, parse_share, parse_task_cap
from airv.run.optiontable import OPTIONS
from airv.run.recipes import load_recipe, recipe_names, run_flags

ROOT = Path(__file__).resolve().parents[1]
# The README's sections whose tables document `airv run`'s options.
README_SECTIONS = ("## `airv run`", "## Decoding knobs")
BY_FLAG = {o.flag: o for o in OPTIONS}


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    run: argparse.ArgumentParser = sub.choices["run"]
    return run


def _readme_rows() -> list[tuple[list[str], str]]:
    """(the flags a row's first cell names, its default cell) for each row of the README's
    option tables of `airv run`."""
    text = (ROOT / "README.md").read_text()
    rows = []
    for heading in README_SECTIONS:
        start = text.index(f"\n{heading}\n")
        end = text.find("\n## ", start + 1)
        for line in text[start:end].splitlines():
            if not line.startswith("| `--"):
                continue
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            rows.append((re.findall(r"`(--[a-z0-9-]+)", cells[0]), cells[1]))
    return rows


def test_the_table_names_each_flag_and_dest_once() -> None:
    assert len(BY_FLAG) == len(OPTIONS)
    names = [o.name for o in OPTIONS]
    # Two flags share a dest only as each other's opposite (--enforce-eager / --compile).
    shared = {n for n in names if names.count(n) > 1}
    assert all({o.exclusive for o in OPTIONS if o.name == n} != {None} for n in shared)


def test_every_option_is_in_run_help_under_its_group(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _run_parser()
    by_group = {
        g.title: {s for a in g._group_actions for s in a.option_strings}
        for g in parser._action_groups
    }
    for option in OPTIONS:
        assert option.flag in by_group[option.group.value], option.flag
    in_parser = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert in_parser == set(BY_FLAG)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for group in Group:
        assert "".join(f"{group.value}:".split()) in out
    for option in OPTIONS:
        said = "".join(option.help_text().replace("%%", "%").split())
        assert said in out, option.flag


def test_every_option_names_a_field_of_the_config() -> None:
    """Each path walks RunConfig's dataclasses field by field; --decode alone names a property
    (the decoding the other flags ask for, which it is checked against)."""
    for option in OPTIONS:
        if option.path is None:
            continue
        obj: object = RUN_DEFAULTS
        for part in option.path.split("."):
            fields = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
            is_property = isinstance(getattr(type(obj), part, None), property)
            assert part in fields or (is_property and option.derived), option.flag
            obj = getattr(obj, part)


def test_each_switch_changes_its_field() -> None:
    for option in OPTIONS:
        if not option.switch or option.path is None or option.derived:
            continue  # a derived field's default is a rule's (--compile: by the budget)
        value = option.action == "store_true"
        if option.to_config is not None:
            value = option.to_config(value)
        assert value != option.config_default(), option.flag


def test_no_help_states_a_default_of_its_own() -> None:
    """A default is written once, in the config dataclasses: a help text never states one, and
    --help adds the field's (or, where a value cannot say it, the table's words)."""
    for option in OPTIONS:
        assert not re.search(r"\(default|default\)|\bdefault:|by default", option.help), option.flag
        shown = option.shown_default()
        if option.default is None and shown is not None:
            assert option.help_text().endswith(f"(default {shown})"), option.flag
            assert shown == option.shown(option.config_default())
        if not (option.switch or option.required or option.path is None):
            assert "(default" in option.help_text(), f"{option.flag} states no default"


def test_the_readme_documents_every_option_and_no_other() -> None:
    documented = {flag for flags, _ in _readme_rows() for flag in flags}
    assert documented - set(BY_FLAG) == set(), "in the README, not in OPTIONS"
    assert set(BY_FLAG) - documented == set(), "in OPTIONS, not in the README"


def _means(option: Option, text: str) -> bool:
    """Whether `text`, a README default, is the default of the field `option` sets."""
    if text == option.shown_default():
        return True
    try:
        value = text if option.type is None else option.type(text)
        value = value if option.to_config is None else option.to_config(value)
    except (ValueError, ConfigError):
        return False
    return bool(value == option.config_default())


def test_the_readmes_defaults_are_the_configs() -> None:
    """Where a README row gives one default per flag, each flag's is its field's default, as
    long as the field's value says it (a default in words is the README's to word)."""
    checked = 0
    for flags, cell in _readme_rows():
        texts = [cell] if len(flags) == 1 else cell.split(", ")
        if len(texts) != len(flags):
            continue
        for flag, text in zip(flags, texts, strict=True):
            option = BY_FLAG[flag]
            if option.default is not None or option.shown_default() is None:
                continue
            text = text.split(" (")[0].strip("`")
            assert _means(option, text), f"README: {flag} defaults to {text!r}"
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("name", recipe_names())
def test_a_recipes_options_parse_back_as_flags(name: str) -> None:
    options = load_recipe(name).options
    assert {f"--{key}" for key in options} <= set(BY_FLAG)
    parsed = runopts.run_option_parser().parse_args(run_flags(options))
    for key in options:
        assert getattr(parsed, BY_FLAG[f"--{key}"].name) is not None, key


def test_the_kaggle_config_examples_run_options_are_flags() -> None:
    options = json.loads((ROOT / "kaggle-config.example.json").read_text())["run"]
    assert {f"--{key}" for key in options} <= set(BY_FLAG)
    runopts.run_option_parser().parse_args(run_flags(options))


def test_recipes_and_the_kernel_take_whole_flag_names() -> None:
    """argparse would read `--max-aug 8` as --max-augmentations: a recipe's or kaggle-config's
    key must be the flag itself."""
    with pytest.raises(SystemExit):
        runopts.run_option_parser().parse_args(run_flags({"max-aug": 8}))


@pytest.fixture()
def files(tmp_path: Path) -> list[str]:
    ch = tmp_path / "ch.json"
    dump_challenges([Task("t1", (Pair(((1,),), ((2,),)),), (((1,),),))], ch)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return ["--challenges", str(ch), "--model", str(model), "--out", str(tmp_path / "o")]


def _field(cfg: object, path: str) -> object:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_each_switch_and_choice_reaches_its_field(files: list[str]) -> None:
    """The mapping by path, flag by flag: every switch, and every choice of an option with
    choices, sets the field the table names to what its converter makes of it."""
    parser = _run_parser()
    endpoint = ["--endpoint", "http://127.0.0.1:8000/v1"]  # what --engine openai needs
    for option in OPTIONS:
        if option.path is None or option.derived:
            continue
        if option.switch:
            trials = [([option.flag], option.action == "store_true")]
        elif option.choices is not None:
            trials = [([option.flag, c, *(endpoint if c == "openai" else [])], c)
                      for c in option.choices]  # fmt: skip
        else:
            continue
        for flags, value in trials:
            cfg = runopts.build_run_config(parser.parse_args([*files, *flags]))
            want = value if option.to_config is None else option.to_config(value)
            assert _field(cfg, option.path) == want, flags


# Parsers of option values: what they accept round-trips, and what they refuse is a
# ConfigError (a clear message, exit 2), never another exception.

_hms = st.tuples(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59))


@given(st.integers(1, 10**9))
def test_a_token_cap_reads_back(n: int) -> None:
    assert parse_task_cap(f"{n}tok") == (None, n)
    assert parse_task_cap(f" {n}TOK ") == (None, n)


@given(_hms.filter(lambda t: any(t)))
def test_a_time_cap_reads_back(hms: tuple[int, int, int]) -> None:
    h, m, s = hms
    assert parse_task_cap(f"{h}h{m}m{s}s") == (h * 3600 + m * 60 + s, None)


@given(st.floats(0, 10**7, allow_nan=False))
def test_a_formatted_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == round(seconds)


@given(st.floats(1e-6, 10**7, allow_nan=False))
def test_a_share_reads_back(share: float) -> None:
    assert parse_share(repr(share)) == share


@given(st.text(max_size=12))
def test_option_parsers_refuse_only_with_a_config_error(text: str) -> None:
    for parse in (parse_task_cap, parse_share, parse_duration):
        with contextlib.suppress(ConfigError):
            parse(text)


@given(st.text(max_size=12))
def test_a_task_cap_is_positive_or_refused(text: str) -> None:
    try:
        seconds, tokens = parse_task_cap(text)
    except ConfigError:
        return
    assert (seconds is None) != (tokens is None)
    assert (seconds or tokens or 0) > 0

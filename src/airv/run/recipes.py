"""Recipes: a winner's whole method by name, as `airv run` options.

A recipe is a JSON file (airv/data/recipes/NAME.json) holding `airv run` options keyed by flag
name without `--`, as `kaggle-config.json`'s run options are, with the source it reproduces
(repository, commit, path) and where airv's mechanism differs. Its options are defaults:
every option given explicitly wins. The run's recipe comes from `--recipe NAME` (also
`run.recipe` in kaggle-config.json), else from the model folder's airv.json (`"recipe": NAME`);
a recipe named by the model supplies the format only when its airv.json gives none.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from airv.core.errors import ConfigError
from airv.core.jsonio import read_config_object
from airv.core.prompt_format import MODEL_PROMPT_FILE, RECIPE_KEY

# Options that only mean something together: an explicit one of a family sets the whole
# family aside in the recipe (`--decode greedy` must not meet the recipe's DFS threshold).
FAMILIES = (
    frozenset({"format_file", "format_preset"}),
    frozenset(
        {"decode", "dfs_threshold", "dfs_max_candidates", "dfs_max_nodes", "beam_width",
         "length_penalty", "temperature", "n", "top_k", "top_p", "min_p"}
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str
    source: dict[str, str]
    differences: str
    options: dict[str, object]

    def flags(self) -> list[str]:
        return run_flags(self.options)


def run_flags(options: dict[str, object]) -> list[str]:
    """{"time-budget": "11h30m", "enforce-eager": true} -> ["--time-budget", "11h30m", ...]:
    how recipes and the Kaggle kernel's config become `airv run` flags."""
    flags: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flags.append(f"--{key}")
        if value is not True:
            flags.append(str(value))
    return flags


def _files() -> Any:
    return resources.files("airv") / "data" / "recipes"


def recipe_names() -> list[str]:
    return sorted(
        f.name.removesuffix(".json") for f in _files().iterdir() if f.name.endswith(".json")
    )


def load_recipe(name: str) -> Recipe:
    path = _files() / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    data = orjson.loads(path.read_bytes())
    return Recipe(
        name=name,
        about=str(data["about"]),
        source=dict(data["source"]),
        differences=str(data.get("differences", "")),
        options=dict(data["options"]),
    )


def model_recipe(model: Path | None) -> tuple[str | None, bool]:
    """The recipe a model folder names in its airv.json, and whether that file gives a
    format of its own (any key besides the recipe)."""
    if model is None or not (Path(model) / MODEL_PROMPT_FILE).is_file():
        return None, False
    data = read_config_object(Path(model) / MODEL_PROMPT_FILE, "model format file")
    name = data.get(RECIPE_KEY)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{Path(model) / MODEL_PROMPT_FILE}: 'recipe' must be a recipe name")
    return name, bool(set(data) - {RECIPE_KEY})


def apply_recipe(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[Recipe | None, dict[str, object]]:
    """Fill every option `args` leaves unset (None) from the run's recipe, parsed by `parser`
    (`airv run`'s own) so that a recipe's values are checked as flags are. Returns the recipe
    and the options it supplied."""
    name = getattr(args, "recipe", None)
    by_model, model_format = (None, False)
    if name is None:
        name, model_format = model_recipe(getattr(args, "model", None))
        by_model = name
    if name is None:
        return None, {}
    recipe = load_recipe(name)
    options = dict(recipe.options)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = parser.parse_args(run_flags(options))
    except SystemExit:
        raise ConfigError(f"recipe {name!r}: {stderr.getvalue().strip()}") from None
    given = {dest for dest, value in vars(args).items() if value is not None}
    if by_model is not None and model_format:  # the model's airv.json gives the format
        given.add("format_file")
    set_aside: set[str] = set().union(*(f for f in FAMILIES if f & given))
    supplied: dict[str, object] = {}
    for dest, value in vars(parsed).items():
        if value is not None and dest not in given and dest not in set_aside:
            setattr(args, dest, value)
            supplied[dest] = value
    return recipe, supplied

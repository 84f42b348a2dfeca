"""`airv recipe [NAME]`: the recipes airv ships, or one of them as the `airv run` options it
sets, with the source whose numbers it reproduces and where airv's mechanism differs."""

from __future__ import annotations

import argparse
import shlex

from airv.run.recipes import load_recipe, recipe_names

HELP = "list the winners' recipes, or print one as `airv run` options"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", nargs="?", help="a recipe to print (default: list)")


def main(args: argparse.Namespace) -> int:
    if args.name is None:
        for name in recipe_names():
            print(f"{name:16} {load_recipe(name).about}")
        print("\n`airv recipe NAME` prints one; `airv run --recipe NAME` runs it.")
        return 0
    recipe = load_recipe(args.name)
    source = recipe.source
    print(f"{recipe.name}: {recipe.about}")
    where = f"{source.get('repository', '')} {source.get('commit', '')}".strip()
    print(f"source: {where}, {source.get('path', '')}")
    if recipe.differences:
        print(f"differences: {recipe.differences}")
    print("options (defaults: any option given explicitly wins):")
    print("  airv run " + shlex.join(recipe.flags()))
    return 0

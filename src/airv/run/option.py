"""What an `airv run` option is (`Option`), the groups of --help, and the parsers of the
values a config field cannot take as typed. The options themselves are the table
airv.run.optiontable.OPTIONS; airv.run.options makes the parser and the RunConfig from it.

Every flag defaults to None and only overrides the defaults held by the config dataclasses
(airv.run.config, airv.engines.config, airv.adapt.config), so a default is stated once and
--help quotes it from there (`RUN_DEFAULTS`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airv.adapt.config import TTTConfig
from airv.core.errors import ConfigError
from airv.core.prompt_format import (
    DEFAULT_PRESET,
    MODEL_PROMPT_FILE,
)
from airv.core.units import parse_duration
from airv.engines.config import (
    Decoding,
    EngineConfig,
)
from airv.run.config import (
    RunConfig,
)

# The defaults, for --help texts: quoted from the config dataclasses, never restated.
RUN_DEFAULTS = RunConfig(challenges=Path("."), out_dir=Path("."))
ENGINE_DEFAULTS = EngineConfig()
DECODING_DEFAULTS = Decoding()
TTT_DEFAULTS = TTTConfig()

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LOG_LEVEL = "INFO"  # airv's own (--log-level); vLLM's is EngineConfig.log_level


class Group(enum.Enum):
    """The option groups of `airv run`, in --help order; each value is its title there."""

    INPUTS = "inputs and outputs"
    BUDGET = "time budget"
    AUGMENTATION = "augmentation rounds"
    VOTING = "voting"
    FORMAT = (
        "prompt format (precedence: --format, --format-preset, the model's "
        f"{MODEL_PROMPT_FILE}, then the {DEFAULT_PRESET!r} preset)"
    )
    TTT = (
        "test-time fine-tuning (LoRA adapters trained on each task's own pairs; "
        f"{TTT_DEFAULTS.mode} by default)"
    )
    ENGINE = "engine"
    DECODING = f"decoding (default {DECODING_DEFAULTS.decode})"
    OUTPUT = "output"


# The groups `airv run` takes besides its inputs; `airv eval` and `airv plan` take them all
# (`airv plan --simulate` prices the re-scoring the vote asks for).
RUN_GROUPS: tuple[Group, ...] = tuple(g for g in Group if g is not Group.INPUTS)


def show(value: object) -> str:
    """A config default as --help and the README write it."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value)


@dataclass(frozen=True)
class Option:
    """One `airv run` option: its flag, where it sets the config, and its --help."""

    flag: str
    group: Group
    # The config field it sets, as a path into RunConfig ("ttt.learning_rate"); None: no
    # field (airv's own log level).
    path: str | None
    help: str  # what it does; never its default, which is added from `path`'s field
    type: Callable[[str], Any] | None = None  # argparse's: a bad value is a usage error
    to_config: Callable[[Any], Any] | None = None  # the parsed value -> the field's; None: as is
    choices: Sequence[str] | None = None
    metavar: str | None = None
    action: str | None = None  # "store_true" / "store_false" (a switch) or "append"
    dest: str | None = None  # argparse's; from the flag unless given
    required: bool = False  # in `airv run`; `airv eval` and `airv plan` check these themselves
    # The default in words, where the field's own value does not say it (None, or derived).
    default: str | None = None
    shown: Callable[[Any], str] = show  # the field's default as --help writes it
    # Set by a rule that reads other options too (_derived), not from this option alone.
    derived: bool = False
    exclusive: str | None = None  # options with the same name are mutually exclusive

    @property
    def name(self) -> str:
        """argparse's dest: the key of the parsed Namespace, the recipes' record."""
        return self.dest or self.flag.removeprefix("--").replace("-", "_")

    @property
    def switch(self) -> bool:
        return self.action in ("store_true", "store_false")

    def config_default(self) -> Any:
        """The value of the field this option sets when it is not given."""
        if self.path is None:
            return None
        value: Any = RUN_DEFAULTS
        for part in self.path.split("."):
            value = getattr(value, part)
        return value

    def shown_default(self) -> str | None:
        """The field's default as --help shows it; None for a switch, a required option or a
        field whose default is None (`default` then says it in words)."""
        if self.switch or self.required or self.path is None:
            return None
        value = self.config_default()
        return None if value is None else self.shown(value)

    def help_text(self) -> str:
        if self.default is not None:
            text = f"{self.help} (default: {self.default})"
        elif (shown := self.shown_default()) is not None:
            text = f"{self.help} (default {shown})"
        else:
            text = self.help
        return text.replace("%", "%%")  # argparse %-formats help texts

    def add_to(self, group: Any, *, required: bool, help: str | None = None) -> None:
        kwargs: dict[str, Any] = {"help": help or self.help_text(), "dest": self.name}
        if self.action is not None:
            kwargs["action"] = self.action
            if self.switch:
                kwargs["default"] = None  # unset: the config's default holds
        for key in ("type", "choices", "metavar"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.required:
            kwargs["required"] = required
        group.add_argument(self.flag, **kwargs)


def parse_task_cap(text: str) -> tuple[float | None, int | None]:
    """'90s' / '2m' -> seconds; '20000tok' -> tokens."""
    t = text.strip().lower()
    unreadable = ConfigError(f"cannot read task cap {text!r}: use e.g. 90s, 2m or 20000tok")
    if t.endswith("tok"):
        try:
            n = int(t[:-3])
        except ValueError:
            raise unreadable from None
        if n <= 0:
            raise ConfigError(f"task cap must be positive, got {text!r}")
        return None, n
    try:
        seconds = parse_duration(t)
    except ConfigError:
        raise unreadable from None
    if seconds <= 0:
        raise ConfigError(f"task cap must be positive, got {text!r}")
    return seconds, None


def parse_share(text: str) -> float:
    """'0.4' -> a fraction; '2h', '900s' or '900' -> seconds (a plain number above 1)."""
    try:
        value = float(text)
    except ValueError:
        return parse_duration(text)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--ttt-budget must be positive, got {text!r}")
    return value

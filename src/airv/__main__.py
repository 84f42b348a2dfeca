"""`python -m airv`: the same command line as the `airv` script."""

from __future__ import annotations

from airv.cli import entry

if __name__ == "__main__":
    entry()

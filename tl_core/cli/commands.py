"""The table of commands: a command's name (as typed after `python -m tl_core`) -> the function that
runs it, filled by the `@command` decorator of each command module (runs.py, results.py ...)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco

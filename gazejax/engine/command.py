"""A command-line tool with its own absl flags (`gazejax.export` and `gazejax.predict` both define --overwrite, so
each keeps a private FlagValues), absl's own flags (--helpfull, logging) still parsed, and one line with exit
status 2 for a bad flag."""
from __future__ import annotations

import sys
from typing import Any, Callable

from absl import app, flags


class Command:
    def __init__(self, name: str):
        self.name = name
        self.flags = flags.FlagValues()

    def define(self, define: Callable, name: str, default: Any, help_text: str):
        """`define` (e.g. flags.DEFINE_string) of one of this command's flags; returns its FlagHolder."""
        return define(name, default, help_text, flag_values=self.flags)

    def parse(self, argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(self.flags(argv, known_only=True))
        except flags.Error as e:
            print(f"{self.name}: usage error: {e}", file=sys.stderr)
            sys.exit(2)

    def run(self, main: Callable[[list[str]], int]) -> None:
        app.run(lambda argv: sys.exit(main(argv)), flags_parser=self.parse)

"""What the analysis command lines share: bad input is one line, exit status 2."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors are one line (``<prog>: error: <message>``,
    naming the bad value and, for choices, the valid ones) without the usage block, and exit
    with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

"""What every command-line entry point shares: a parser whose usage errors are one line, like all our errors."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (usage: {self.prog} --help)\n")

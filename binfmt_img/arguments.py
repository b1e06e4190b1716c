"""Argument parsing for the debugger commands of both adapters (and the store's): argparse
whose every refusal is one line, raised (a debugger command must not exit the debugger)."""

from __future__ import annotations

import argparse


class ArgumentError(Exception):
    """A refused command line; its text starts with the command's name."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line through the debugger, not an exit
        raise ArgumentError(f"{self.prog}: {message}")


def one_line(command: str, error: object) -> str:
    """An error as the one line a debugger shows: `command: what`, said once."""
    text = " ".join(str(error).split())
    return text if text.startswith(f"{command}:") else f"{command}: {text}"

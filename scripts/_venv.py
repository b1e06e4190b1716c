"""Shared start of the scripts: run under the project's virtualenv, with the checkout's root on
sys.path, whichever python started them."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
VENV = os.path.join(ROOT, ".venv")


def enter(script: str) -> None:
    """Re-execute `script` with .venv's python when another one runs it."""
    python = os.path.join(VENV, "bin", "python")
    if os.path.exists(python) and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(python, [python, os.path.realpath(script), *sys.argv[1:]])
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

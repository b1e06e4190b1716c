"""Comparing checkpoints: img-diff (diff.py, over the sides of sides.py) and img-bisect
(bisect.py). Knows no debugger: what only a debugger can tell (a variable's type, an
expression's value, a restore) comes in through small hooks."""

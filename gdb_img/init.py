"""`source gdb_img/init.py` in GDB: puts the project and its virtualenv on sys.path and adds
img-restore, img-dump and img-info."""

import glob
import os
import sys

# The code's own file name: GDB's __file__ is the outer script's when sourced from one.
_root = os.path.dirname(os.path.dirname(os.path.abspath(sys._getframe().f_code.co_filename)))
for _site in sorted(glob.glob(os.path.join(_root, ".venv", "lib", "python3*", "site-packages"))):
    if _site not in sys.path:
        sys.path.append(_site)
if _root not in sys.path:
    sys.path.insert(0, _root)

import gdb_img.commands  # noqa: E402

gdb_img.commands.register()

"""GDB's entry point of an installed binfmt-img: adds img-restore, img-dump and img-info.

Either line in ~/.gdbinit loads it:
    source VENV/lib/python3.11/site-packages/binfmt_img/gdb.py   (any virtualenv)
    python import binfmt_img.gdb                                 (the package on GDB's path)
Sourced, it puts the directory it was installed into on sys.path first: GDB embeds the
system's python (/usr/bin/python3), which knows nothing of a virtualenv. In a checkout,
`source binfmt_img/gdb.py` works as `source gdb_img/init.py` does.
"""

import glob
import os
import sys

# The code's own file name: GDB's __file__ is the outer script's when sourced from one.
_site = os.path.dirname(os.path.dirname(os.path.abspath(sys._getframe().f_code.co_filename)))
if _site not in sys.path:
    sys.path.insert(0, _site)
# In a checkout (not installed), the dependencies are in its .venv.
for _packages in sorted(glob.glob(os.path.join(_site, ".venv", "lib", "python3*",
                                               "site-packages"))):
    if _packages not in sys.path:
        sys.path.append(_packages)

import gdb_img.commands  # noqa: E402

gdb_img.commands.register()

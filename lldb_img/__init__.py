"""`command script import /work/main/lldb_img` in LLDB: puts the project and its virtualenv on
sys.path and adds img-restore, img-dump and img-info."""

import glob
import os
import sys

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _site in sorted(glob.glob(os.path.join(_root, ".venv", "lib", "python3*", "site-packages"))):
    if _site not in sys.path:
        sys.path.append(_site)
if _root not in sys.path:
    sys.path.insert(0, _root)


def __lldb_init_module(debugger, internal_dict: dict) -> None:  # the name LLDB calls
    from . import commands

    for command in commands.COMMANDS:
        debugger.HandleCommand(f"command script add -o -C disk-file "
                               f"-c {__name__}.commands.{command.__name__} {command.name}")

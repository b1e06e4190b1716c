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


def _add(debugger, flags: str, path: str, name: str) -> bool:
    import lldb

    result = lldb.SBCommandReturnObject()
    debugger.GetCommandInterpreter().HandleCommand(
        f"command script add -o {flags}-c {path} {name}", result)
    return result.Succeeded()


def __lldb_init_module(debugger, internal_dict: dict) -> None:  # the name LLDB calls
    from lldb_img.family import parsed_commands

    try:  # LLDB 18+: parsed commands, with options LLDB knows (help, -h, completion)
        from lldb_img import parsed
    except ImportError:
        parsed = None
    for command in parsed_commands():
        if parsed is not None and _add(debugger, "--parsed ", f"{__name__}.parsed.Parsed"
                                       f"{command.__name__}", command.name):
            continue
        _add(debugger, "-C disk-file ", f"{command.__module__}.{command.__name__}",
             command.name)
    __import__(f"{__name__}.compare").compare.register(debugger)  # img-bisect: raw

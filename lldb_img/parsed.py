"""The commands as LLDB 18+ parsed commands (`command script add --parsed`): LLDB parses the
options from their definitions, so `help img-restore` lists them, `-h` works and options and
file names complete. Imported only where lldb.plugins.parsed_cmd exists."""

from __future__ import annotations

import argparse

import lldb
from lldb.plugins.parsed_cmd import ParsedCommand

from binfmt_img.arguments import ArgumentError
from lldb_img.commands import HELP, Command, Option
from lldb_img.family import parsed_commands


def _problem(command: type[Command], options: tuple[Option, ...],
             values: dict[str, object], args: list[str]) -> str | None:
    """What argparse would refuse; LLDB checks neither enum values (ours are kept raw, for a
    message naming the choices) nor the argument count."""
    for option in options:
        value = values[option.dest]
        if option.choices and value is not None and value not in option.choices:
            return (f"argument --{option.long}/-{option.short}: invalid choice: "
                    f"{value!r} (choose from {', '.join(option.choices)})")
    required = [name for name, repeat in command.arguments if repeat == "plain"]
    if len(args) < len(required):
        return f"the following arguments are required: {', '.join(required[len(args):])}"
    most = (len(args) if any(repeat == "star" for _, repeat in command.arguments)
            else len(command.arguments))
    if len(args) > most:
        return f"unrecognized arguments: {' '.join(args[most:])}"
    return None


def _positional(command: type[Command], args: list[str]) -> dict[str, object]:
    """The words given to the command's positional arguments, as argparse gives them."""
    out: dict[str, object] = {}
    for i, (name, repeat) in enumerate(command.arguments):
        out[name] = args[i:] if repeat == "star" else args[i] if i < len(args) else None
    return out


def _parsed(command: type[Command]) -> type:
    options = command.options + (HELP,)

    class Parsed(ParsedCommand):
        __doc__ = command.__doc__

        def __init__(self, debugger: lldb.SBDebugger, internal_dict: dict) -> None:
            self.command = command(debugger, internal_dict)
            super().__init__(debugger, internal_dict)

        def setup_command_definition(self) -> None:
            parser = self.get_parser()
            for option in options:
                if option.value and not option.choices:
                    parser.add_option(option.short, option.long, option.help, option.default,
                                      dest=option.dest, value_type=lldb.eArgTypePath)
                elif option.choices:  # with `value`: None unless given
                    parser.add_option(option.short, option.long, option.help, option.default,
                                      dest=option.dest, value_type=lldb.eArgTypeValue,
                                      enum_values=[[c, c] for c in option.choices])
                else:
                    parser.add_option(option.short, option.long, option.help, False,
                                      dest=option.dest)
                    # No value type: LLDB makes it a flag that takes no argument.
                    del parser.options_dict[option.long]["value_type"]
            if command.arguments:
                parser.add_argument_set([parser.make_argument_element(command.argument_type,
                                                                      repeat)
                                         for _, repeat in command.arguments])

        def set_option_value(self, exe_ctx: lldb.SBExecutionContext, name: str,
                             value: str) -> bool:
            option = next((o for o in options if o.long == name), None)
            if option is None:
                return False
            parser = self.get_parser()
            if option.repeat:  # a new list: the default one is shared between runs
                value = [*getattr(parser, option.dest), value]
            object.__setattr__(parser, option.dest,
                               value if option.choices or option.value else True)
            parser.options_dict[name]["_value_set"] = True
            return True

        def get_short_help(self) -> str:
            return self.command.get_short_help()

        def get_long_help(self) -> str:
            return self.command.get_long_help(usage=False)

        def __call__(self, debugger: lldb.SBDebugger, args: lldb.SBStringList,
                     exe_ctx: lldb.SBExecutionContext,
                     result: lldb.SBCommandReturnObject) -> None:
            parser = self.get_parser()
            if getattr(parser, HELP.dest, False):
                debugger.GetCommandInterpreter().HandleCommand(f"help {command.name}", result)
                return
            values = {o.dest: getattr(parser, o.dest) for o in command.options}
            positional = [str(arg) for arg in args]

            def parse() -> argparse.Namespace:
                problem = _problem(command, command.options, values, positional)
                if problem is not None:
                    raise ArgumentError(problem)
                return argparse.Namespace(**values, **_positional(command, positional))

            self.command.run(debugger, parse, result)

    Parsed.__name__ = Parsed.__qualname__ = f"Parsed{command.__name__}"
    return Parsed


PARSED = tuple(_parsed(command) for command in parsed_commands())
globals().update({p.__name__: p for p in PARSED})

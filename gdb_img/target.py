"""The core's Target interface over GDB's Python API."""

from __future__ import annotations

import gdb

_MASK = (1 << 64) - 1


class GdbTarget:
    def __init__(self) -> None:
        self.inferior = gdb.selected_inferior()

    def pid(self) -> int | None:
        return self.inferior.pid or None

    def is_local(self) -> bool:
        connection = getattr(self.inferior, "connection", None)
        return connection is not None and connection.type == "native"

    def read_memory(self, addr: int, size: int) -> bytes:
        return bytes(self.inferior.read_memory(addr, size))

    def write_memory(self, addr: int, data: bytes | memoryview) -> None:
        self.inferior.write_memory(addr, data)

    def read_registers(self, names: tuple[str, ...]) -> dict[str, int]:
        frame = gdb.newest_frame()
        out = {}
        for name in names:
            try:
                value = frame.read_register(name)
            except ValueError:
                continue  # not a register this GDB shows
            out[name] = int(value) & _MASK
        return out

    def write_registers(self, values: dict[str, int]) -> None:
        for name, value in values.items():
            gdb.execute(f"set ${name} = {value & _MASK:#x}", to_string=True)

    def step_instruction(self) -> None:
        gdb.execute("stepi", to_string=True)

    def memory_changed(self) -> None:
        gdb.execute("maintenance flush dcache", to_string=True)
        gdb.execute("maintenance flush register-cache", to_string=True)

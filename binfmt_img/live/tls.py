"""GDT TLS descriptors <-> the `struct user_desc` that set_thread_area/get_thread_area take."""

from __future__ import annotations

import ctypes
import errno
import functools
import struct

GDT_ENTRY_TLS_MIN = 12
USER_DESC = struct.Struct("<IIII")  # entry_number, base_addr, limit, flag bits
USER_DESC_SIZE = USER_DESC.size


def descriptor_to_user_desc(entry: int, desc: int) -> bytes:
    low, high = desc & 0xFFFFFFFF, desc >> 32
    base = (low >> 16) | ((high & 0xFF) << 16) | (high & 0xFF000000)
    limit = (low & 0xFFFF) | (high & 0xF0000)
    kind = (high >> 8) & 0xF
    bits = (((high >> 22) & 1)                  # seg_32bit (D/B)
            | (((kind >> 2) & 3) << 1)          # contents
            | ((0 if kind & 2 else 1) << 3)     # read_exec_only
            | (((high >> 23) & 1) << 4)         # limit_in_pages (G)
            | ((0 if high & 0x8000 else 1) << 5)  # seg_not_present
            | (((high >> 20) & 1) << 6)         # useable (AVL)
            | (((high >> 21) & 1) << 7))        # lm (L)
    return USER_DESC.pack(entry, base, limit, bits)


def user_desc_to_descriptor(raw: bytes) -> int:
    _, base, limit, bits = USER_DESC.unpack(raw)
    seg_32bit, contents = bits & 1, (bits >> 1) & 3
    read_exec_only, limit_in_pages = (bits >> 3) & 1, (bits >> 4) & 1
    not_present, useable, lm = (bits >> 5) & 1, (bits >> 6) & 1, (bits >> 7) & 1
    if base == 0 and limit == 0 and read_exec_only and not_present and not (
            seg_32bit or contents or limit_in_pages or useable or lm):
        return 0  # the empty descriptor, as the kernel clears it
    kind = (contents << 2) | ((0 if read_exec_only else 1) << 1) | 1  # accessed
    low = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    high = (((base >> 16) & 0xFF) | (kind << 8) | (1 << 12) | (3 << 13)
            | ((0 if not_present else 1) << 15) | (limit & 0xF0000) | (useable << 20)
            | (lm << 21) | (seg_32bit << 22) | (limit_in_pages << 23) | (base & 0xFF000000))
    return low | (high << 32)


def describe(desc: int) -> str:
    if not desc:
        return "empty"
    _, base, limit, _ = USER_DESC.unpack(descriptor_to_user_desc(0, desc))
    return f"base {base:#x} limit {limit:#x}"


GET_THREAD_AREA = 211


@functools.lru_cache(maxsize=1)
def gdt_tls_supported() -> bool:
    """Whether this kernel has set_thread_area (32-bit emulation): asked of the debugger's
    own process with a harmless get_thread_area, the inferior runs on the same kernel."""
    libc = ctypes.CDLL(None, use_errno=True)
    desc = ctypes.create_string_buffer(USER_DESC.pack(GDT_ENTRY_TLS_MIN, 0, 0, 0),
                                       USER_DESC_SIZE)
    result = libc.syscall(GET_THREAD_AREA, desc)
    return not (result < 0 and ctypes.get_errno() == errno.ENOSYS)

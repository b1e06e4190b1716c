"""binfmt-img: checkpoint a stopped Linux x86-64 process into an image file and resume it
in GDB or LLDB. `binfmt_img.api` is the Python API for scripts (docs/API.md)."""

__version__ = "0.1.0"

"""The live-process work: reading a stopped process through a debugger's Target and /proc
(dump), and rebuilding one from an image (restore), by system calls run inside it."""

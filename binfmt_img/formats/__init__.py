"""The file formats: the image model, the seed's v0 layout, our v1, ELF cores, and what reads
and checks them (no process is touched here)."""

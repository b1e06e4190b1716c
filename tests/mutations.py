"""Mutated images for the untrusted-input test: a seeded mutator over the model (so that
checksums are right and the semantic checks are what is exercised) and over raw bytes (v0,
which has no checksums, and cores)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from binfmt_img.formats import image_file
from binfmt_img.formats.model import ALL_REGISTERS, MM_FIELDS, Image, OpenFile, SigAction, Xsave

U64 = (1 << 64) - 1


def interesting(rng: random.Random) -> int:
    return rng.choice([0, 1, U64, 1 << 63, (1 << 47) - 1, 1 << 47, 0x7FFFFFFFF000,
                       0xFFFFFFFFFF600000, 0x1000, rng.getrandbits(64), rng.getrandbits(32),
                       rng.getrandbits(12) << 12])


def strange_path(rng: random.Random, where: Path) -> str:
    return rng.choice([str(where / "fifo"), str(where), "/dev/zero", "/dev/tty", "/proc/self/mem",
                       "relative/path", "/nonexistent/x", "/" + "a" * 5000, "/bin/sh",
                       "/etc/passwd", str(where / "victim")])


def _register(image: Image, rng: random.Random, _where: Path) -> None:
    rng.choice(image.threads).registers[rng.choice(ALL_REGISTERS)] = interesting(rng)


def _vma_field(image: Image, rng: random.Random, _where: Path) -> None:
    vma = rng.choice(image.vmas)
    name = rng.choice(["start", "end", "prot", "flags", "pgoff"])
    value = interesting(rng) if name in ("start", "end", "pgoff") else rng.getrandbits(
        rng.choice([3, 8, 32]))
    setattr(vma, name, value)


def _vma_path(image: Image, rng: random.Random, where: Path) -> None:
    vma = rng.choice(image.vmas)
    vma.path, vma.file = strange_path(rng, where), None


def _vma_drop_or_copy(image: Image, rng: random.Random, _where: Path) -> None:
    vma = rng.choice(image.vmas)
    if rng.random() < 0.5:
        image.vmas.remove(vma)
    else:
        image.vmas.append(replace(vma))


def _mm(image: Image, rng: random.Random, _where: Path) -> None:
    image.mm[rng.choice(MM_FIELDS)] = interesting(rng)


def _auxv(image: Image, rng: random.Random, _where: Path) -> None:
    count = rng.choice([0, 1, 40, 70, 5000])
    image.auxv = [(rng.getrandbits(6), interesting(rng)) for _ in range(count)]


def _xsave(image: Image, rng: random.Random, _where: Path) -> None:
    thread = rng.choice(image.threads)
    size = rng.choice([0, 100, 576, 832, 4096, 20000])
    thread.xsave = Xsave(interesting(rng) & 0xFFFFFFFF, bytes(rng.getrandbits(8)
                                                              for _ in range(size)))


def _sigaction(image: Image, rng: random.Random, _where: Path) -> None:
    if not image.sigactions:
        image.sigactions = [SigAction() for _ in range(64)]
    number = rng.randrange(len(image.sigactions))
    image.sigactions[number] = SigAction(interesting(rng), interesting(rng), interesting(rng),
                                         interesting(rng))


def _thread_field(image: Image, rng: random.Random, _where: Path) -> None:
    thread = rng.choice(image.threads)
    name = rng.choice(["tid", "sigmask", "clear_child_tid", "robust_list", "robust_list_len"])
    setattr(thread, name, interesting(rng) & (0xFFFFFFFF if name == "tid" else U64))
    if rng.random() < 0.3:
        thread.altstack = replace(thread.altstack, sp=interesting(rng),
                                  size=interesting(rng), flags=rng.getrandbits(31))


def _threads(image: Image, rng: random.Random, _where: Path) -> None:
    image.threads = image.threads * rng.choice([2, 50, 5000])


def _files(image: Image, rng: random.Random, where: Path) -> None:
    image.files = list(image.files or [])
    image.files.append(OpenFile(fd=rng.choice([3, 7, 1023, 1 << 21, 5000]),
                                kind=rng.randrange(6), path=strange_path(rng, where),
                                flags=rng.getrandbits(22), pos=interesting(rng)))
    if rng.random() < 0.3:
        image.cwd = strange_path(rng, where)


def _exe(image: Image, rng: random.Random, where: Path) -> None:
    image.exe_path = strange_path(rng, where)


MUTATORS: list[Callable[[Image, random.Random, Path], None]] = [
    _register, _vma_field, _vma_path, _vma_drop_or_copy, _mm, _auxv, _xsave, _sigaction,
    _thread_field, _threads, _files, _exe]


def model_mutations(good: Path, out: Path, count: int, seed: int) -> list[Path]:
    """`count` images, each the good one with one to three fields changed."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        image = image_file.load(str(good))
        for _ in range(rng.choice([1, 1, 2, 3])):
            rng.choice(MUTATORS)(image, rng, out)
        path = out / f"model-{n:03}.img"
        try:
            image_file.save(str(path), image)
        except Exception:  # noqa: BLE001 - a mutation the writer itself cannot encode
            continue
        made.append(path)
    return made


def byte_mutations(good: Path, out: Path, prefix: str, count: int, seed: int) -> list[Path]:
    """Byte flips, overwritten words and truncations of a file with no checksums."""
    rng = random.Random(seed)
    data = good.read_bytes()
    made = []
    for n in range(count):
        bad = bytearray(data)
        how = rng.random()
        if how < 0.2:
            bad = bad[:rng.randrange(len(bad))]
        else:
            for _ in range(rng.choice([1, 4, 16])):
                at = rng.randrange(min(len(bad), 1 << 16) if rng.random() < 0.8 else len(bad))
                bad[at:at + 8] = interesting(rng).to_bytes(8, "little")
        path = out / f"{prefix}-{n:03}"
        path.write_bytes(bytes(bad))
        made.append(path)
    return made


def files_named(out: Path) -> None:
    """What the strange paths point at inside the test's directory."""
    os.mkfifo(out / "fifo")
    (out / "victim").write_bytes(b"must not change\n" * 256)

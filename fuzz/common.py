"""What every harness shares: splitting a fuzz input into parts, chunkings of a file as the
helpers read it, and the atheris entry point. Nothing here needs atheris until a harness runs
as a program, so the property checks replay under pytest without it.

Input layout: `header SEP part1 SEP part2 ...` with SEP = two NUL bytes. A single NUL may
still appear inside a part (a file may hold one); argv parts split on a single NUL, as argv does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

SEP = b"\0\0"
T = TypeVar("T")
MAX_CHUNKS = 48


def parts(data: bytes, count: int) -> list[bytes]:
    """`count` parts of the input; missing ones are empty."""
    found = data.split(SEP, count - 1)
    return found + [b""] * (count - len(found))


def argv(part: bytes) -> list[bytes]:
    """A NUL-separated argument list, as the kernel hands it over: empty means no argument."""
    return part.split(b"\0") if part else []


def fields(part: bytes, count: int) -> list[bytes]:
    """`count` NUL-separated fields of a part; missing ones are empty, the last takes the rest."""
    found = part.split(b"\0", count - 1)
    return found + [b""] * (count - len(found))


class Header:
    """Control bytes: `byte(i)` is 0 beyond the end, so a short header is a valid one."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def byte(self, index: int) -> int:
        return self.raw[index] if index < len(self.raw) else 0

    def flag(self, index: int, bit: int) -> bool:
        return bool(self.byte(index) >> bit & 1)

    def u32(self, index: int) -> int:
        return int.from_bytes(bytes(self.byte(index + i) for i in range(4)), "little")

    def choose(self, index: int, options: Sequence[T]) -> T:
        return options[self.byte(index) % len(options)]


def chunkings(data: bytes, sizes: bytes) -> list[list[bytes]]:
    """Ways a reader may see `data`: whole, one byte at a time (small files), cut at sizes
    drawn from `sizes` (1 to 256 bytes each, cycling; the 48th chunk takes the rest), and
    fixed-size reads as files.chunks makes them (at most 48)."""
    ways = [[data]]
    if len(data) <= 128:
        ways.append([data[i:i + 1] for i in range(len(data))])
    if sizes:
        cuts, position = [], 0
        while position < len(data):
            step = 1 + sizes[len(cuts) % len(sizes)] if len(cuts) < MAX_CHUNKS - 1 else len(data)
            cuts.append(data[position:position + step])
            position += step
        ways.append(cuts)
        fixed = max(1 + sizes[0] % 64, -(-len(data) // MAX_CHUNKS))
        ways.append([data[i:i + fixed] for i in range(0, len(data), fixed)])
    return ways


_SCRIBBLE = b"\nbob:0:1\n1000:0:1:\n"


def reused_buffer(chunks: Iterable[bytes]) -> Iterator[bytearray]:
    """The chunks as files.chunks hands them over: a chunk as long as the buffer is the one
    buffer, overwritten (here with lines that would grant ids) once the next chunk is asked
    for; a shorter one is a copy."""
    chunks = list(chunks)
    size = max(map(len, chunks), default=0)
    buf = bytearray(size)
    for chunk in chunks:
        if len(chunk) == size:
            buf[:] = chunk
            yield buf
            buf[:] = (_SCRIBBLE * (size // len(_SCRIBBLE) + 1))[:size]
        else:
            yield bytearray(chunk)


def find_sysmodule() -> None:
    """Make the cffi module `_nsgate_sys` importable (front ends import it through
    nsgate.system.kernel): the one `make` builds in build/ffi, unless one is on the path."""
    if importlib.util.find_spec("_nsgate_sys") is None:
        sys.path.append(str(Path(__file__).resolve().parent.parent / "build" / "ffi"))


def instrumented(module_name: str) -> contextlib.AbstractContextManager:
    """Atheris instrumentation of nsgate's modules when a harness runs as the fuzzer (its
    `__name__` is `__main__`); nothing when pytest imports it to replay inputs."""
    if module_name != "__main__":
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["nsgate"])


def fuzz_main(check: Callable[[bytes], None]) -> None:
    """Run `check` under libFuzzer; the command line holds libFuzzer's options and corpora."""
    import atheris

    atheris.Setup(sys.argv, check)
    atheris.Fuzz()

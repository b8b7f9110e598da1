"""Memory of nsgated's workers. A worker is a fork of the service, sharing its pages until it
writes them; Python writes nearly every object it touches (reference counts), so a request would
spend most of its time copying pages. An idle worker copies them in advance."""

import posix

from nsgate.system import kernel


def own_private_pages() -> None:
    """Fault in every private writable mapping of this process, as if written."""
    fd = posix.open("/proc/self/maps", posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks = []
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
    finally:
        posix.close(fd)
    for line in b"".join(chunks).split(b"\n"):
        fields = line.split()
        if len(fields) < 2 or fields[1][1:2] != b"w" or fields[1][3:4] != b"p":
            continue
        start, end = (int(part, 16) for part in fields[0].split(b"-"))
        try:
            kernel.populate_write(start, end - start)
        except OSError:
            continue  # a mapping that cannot be populated (a guard page): left as it is

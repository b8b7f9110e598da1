"""Memory of nsgated's workers. A worker is a fork of the service, sharing its pages until it
writes them; Python writes nearly every object it touches (reference counts), so a request would
spend most of its time copying pages. An idle worker copies them in advance: the pages it still
shares with the service, not the ones the service never touched (a fork leaves those unmapped;
a request seldom uses one, and populating them would only allocate zeroed memory)."""

import posix

from nsgate.system import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PAGE = posix.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_SWAPPED = 1 << 62
_FILE_OR_SHARED = 1 << 61  # a page of the file itself (or shared): no copy of the service's
_CHUNK_PAGES = 64  # populated between two looks at `interrupted`


def own_private_pages(interrupted: "Callable[[], bool]") -> bool:
    """Fault in, as if written, the pages of this process's private writable mappings that it
    shares with its parent; stop as soon as `interrupted()` is true (a request waits: it copies
    what it touches itself). False when interrupted."""
    try:
        maps = _read_all("/proc/self/maps")
        pagemap = posix.open("/proc/self/pagemap", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return True  # nothing known to copy: the request copies as it goes
    try:
        for line in maps.split(b"\n"):
            fields = line.split()
            if len(fields) < 2 or fields[1][1:2] != b"w" or fields[1][3:4] != b"p":
                continue
            start, end = (int(part, 16) for part in fields[0].split(b"-"))
            for first, count in _shared_runs(pagemap, start, end):
                while count:
                    if interrupted():
                        return False
                    step = min(count, _CHUNK_PAGES)
                    try:
                        kernel.populate_write(first, step * PAGE)
                    except OSError:
                        break  # a range that cannot be populated (a guard page): left as it is
                    first, count = first + step * PAGE, count - step
    finally:
        posix.close(pagemap)
    return True


def _shared_runs(pagemap: int, start: int, end: int) -> "list[tuple[int, int]]":
    """(first address, page count) of each run of pages in [start, end) mapped to a private
    copy-on-write page (present, not the file's own page)."""
    pages = (end - start) // PAGE
    try:
        data = posix.pread(pagemap, pages * 8, start // PAGE * 8)
    except OSError:
        return [(start, pages)]  # unreadable: all of it, as if every page were shared
    runs: list[tuple[int, int]] = []
    first = -1
    for index, entry in enumerate(memoryview(data).cast("Q")):
        shared = entry & _PRESENT and not entry & (_SWAPPED | _FILE_OR_SHARED)
        if shared and first < 0:
            first = index
        elif not shared and first >= 0:
            runs.append((start + first * PAGE, index - first))
            first = -1
    if first >= 0:
        runs.append((start + first * PAGE, len(data) // 8 - first))
    return runs


def _read_all(path: str) -> bytes:
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks = []
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
    finally:
        posix.close(fd)
    return b"".join(chunks)

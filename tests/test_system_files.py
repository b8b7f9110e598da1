"""system/files.py: reading a trusted file whole. Its buffer is sized from fstat; a file whose
content passes that size (one that grows while it is read, or a procfs file, which reports
size 0) must still come back exactly, not with a reused buffer's later content in place of its
earlier chunks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nsgate.system import files

from tests.usernic_support import wait_until

# /proc/PID/environ of a root process: a regular file of root's, mode 0400, size 0, read in
# full pages; distinct numbers so that any chunk read in place of another shows
PADDING = "".join(f"{i:06d}," for i in range(3000))


def test_a_file_longer_than_its_reported_size_is_read_exactly():
    sleeper = subprocess.Popen(["sleep", "600"], env={"PAD": PADDING})
    try:
        # Popen returns at the exec's close-on-exec, before the new environment is in place:
        # wait until the kernel shows it asleep
        wait_until(lambda: Path(f"/proc/{sleeper.pid}/wchan").read_text()
                   in ("hrtimer_nanosleep", "do_nanosleep"), what="sleep to be asleep")
        path = f"/proc/{sleeper.pid}/environ"
        expected = Path(path).read_bytes()
        assert expected == f"PAD={PADDING}\0".encode()
        assert files.read_small(path) == expected
        fd = files.open_trusted(path)
        assert fd is not None
        try:
            assert files.read_all(fd) == expected
        finally:
            files.close_quietly(fd)
    finally:
        sleeper.kill()
        sleeper.wait()

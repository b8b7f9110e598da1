"""This process's environment block exactly as execve(2) gave it: every entry, in order,
duplicates included (os.environ keeps only the first of two entries of one name)."""

import posix

from nsgate.system import files

ENVIRON = "/proc/self/environ"
LIMIT = 1 << 20  # ARG_MAX's usual share: an environment larger than this is not pam_exec's


def read() -> bytes:
    fd = posix.open(ENVIRON, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        return files.read_all(fd, LIMIT)
    finally:
        posix.close(fd)

"""This process's environment block exactly as execve(2) gave it: every entry, in order,
duplicates included (os.environ keeps only the first of two entries of one name)."""

import posix

ENVIRON = "/proc/self/environ"
LIMIT = 1 << 20  # ARG_MAX's usual share: an environment larger than this is not pam_exec's


def read() -> bytes:
    fd = posix.open(ENVIRON, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= LIMIT:
            chunk = posix.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        posix.close(fd)

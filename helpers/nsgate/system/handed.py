"""What a caller of nsgated opened itself and handed over with its request (nsgate-protocol(7),
TARGET): the service never resolves a caller's process id or path in its own namespaces, so the
helper code takes the descriptor, or the caller's own errno, in place of opening the argument."""


class Handed:
    __slots__ = ("errno", "fd")

    def __init__(self, fd: int | None, errno: int) -> None:
        self.fd = fd  # the caller's descriptor of the target, None when it sent none
        self.errno = errno  # > 0: the caller's open failed so; -1: it did not try

    def strerror(self) -> str:
        import posix

        return posix.strerror(self.errno) if self.errno > 0 else "no descriptor was handed over"

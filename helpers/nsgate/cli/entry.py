"""The entry point of every helper: the launcher's fixed code calls `run("newuidmap")`.

Verifies the code it runs before anything else, dispatches, writes the one message, exits. No
exception ever reaches the user as a traceback.
"""

import posix
import sys

HELPERS = ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")


def run(prog: str) -> None:
    status, out, text = 1, "", ""
    try:
        status, out, text = _dispatch(prog, sys.argv[1:])
    except BaseException as err:  # noqa: BLE001 - the last line of defence: never a traceback
        _drop_privilege()
        text = f"{prog}: internal error ({type(err).__name__}); nothing more was done\n"
    _emit(1, out)
    _emit(2, text)
    posix._exit(status)


def _dispatch(prog: str, argv: list[str]) -> tuple[int, str, str]:
    """The exit status, the text for stdout and the text for stderr."""
    from nsgate.errors import Refusal
    from nsgate.system import integrity

    try:
        integrity.verify_startup(__file__.rsplit("/", 3)[0])
    except Refusal as refusal:
        _drop_privilege()
        return 1, "", refusal.text(prog)
    if prog in ("newuidmap", "newgidmap"):
        from nsgate.cli import newidmap

        status, text = newidmap.main(prog, argv)
        return status, "", text
    if prog == "lxc-user-nic":
        from nsgate.cli import usernic

        return usernic.main(argv)
    if prog == "getsubids":
        from nsgate.cli import getsubids

        return getsubids.main(argv)
    return 1, "", f"nsgate: unknown helper {prog!r}\n"


def _drop_privilege() -> None:
    """Become the caller before saying anything. Where the ids cannot be set (an unmapped id
    inside a user namespace), a process still holding root says nothing at all."""
    uid, gid = posix.getuid(), posix.getgid()
    try:
        posix.setresgid(gid, gid, gid)
        posix.setresuid(uid, uid, uid)
    except OSError:
        if posix.geteuid() == 0 and uid != 0:
            posix._exit(1)


def _emit(fd: int, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    while data:
        try:
            written = posix.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            return  # nowhere to say it; the exit status still tells
        data = data[written:]

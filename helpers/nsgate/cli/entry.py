"""The entry point of every helper: the launcher's fixed code calls `run("newuidmap")`.

Verifies the code it runs before anything else, dispatches, writes the one message, exits. No
exception ever reaches the user as a traceback. nsgated's workers run the same helper code
through `serve`, with the target the caller handed over.
"""

import posix
import sys

HELPERS = ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")


TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.system.handed import Handed


def run(prog: str) -> None:
    status, out, text = serve(prog, sys.argv[1:], None, verify=True)
    _emit(1, out)
    _emit(2, text)
    posix._exit(status)


def serve(prog: str, argv: list[str], handed: "Handed | None",
          verify: bool = False) -> tuple[int, str, str]:
    """The exit status, the text for stdout and the text for stderr of one helper run;
    privilege is dropped when it returns."""
    try:
        return _dispatch(prog, argv, handed, verify)
    except BaseException as err:  # noqa: BLE001 - the last line of defence: never a traceback
        _drop_privilege()
        return 1, "", f"{prog}: internal error ({type(err).__name__}); nothing more was done\n"


def _dispatch(prog: str, argv: list[str], handed: "Handed | None",
              verify: bool) -> tuple[int, str, str]:
    from nsgate.errors import Refusal
    from nsgate.system import integrity

    if verify:
        try:
            integrity.verify_startup(__file__.rsplit("/", 3)[0])
        except Refusal as refusal:
            _drop_privilege()
            return 1, "", refusal.text(prog)
    if prog in ("newuidmap", "newgidmap"):
        from nsgate.cli import newidmap

        status, text = newidmap.main(prog, argv, handed)
        return status, "", text
    if prog == "lxc-user-nic":
        from nsgate.cli import usernic

        return usernic.main(argv, handed)
    if prog == "getsubids":
        from nsgate.cli import getsubids

        return getsubids.main(argv)
    return 1, "", f"nsgate: unknown helper {prog!r}\n"


def _drop_privilege() -> None:
    """Become the caller before saying anything. Where the ids cannot be set (an unmapped id
    inside a user namespace), a process still holding root says nothing at all."""
    credentials = sys.modules.get("nsgate.system.credentials")  # never an import here
    served = credentials.CallerIds.served if credentials is not None else None
    uid, gid = served if served is not None else (posix.getuid(), posix.getgid())
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

"""nsgate: the administrator's command (nsgate(8)). Not setuid: read-only verbs run as anyone,
`subid` and `nics gc` refuse unless run as root.

    nsgate check [--json]                         lint every file nsgate reads, and the install
    nsgate explain [USER] [--json]                what a user may do, and why
    nsgate subid add|remove USER START COUNT [-g] edit /etc/subuid (-g: /etc/subgid) safely
    nsgate subid allocate USER [--count N | --if-missing] [-g]
                                                  add a range as login.defs asks (as useradd)
    nsgate nics list [--json] | nics gc           the nic database, and pruning it
    nsgate network apply | show [--json]          the per-user networks: load them (root), show
    nsgate session                                the PAM session hook, run by pam_exec

Exit status: 0 success (check: no errors), 1 errors found or an operation refused or failed,
2 usage error. Every failure is a one-line `nsgate: …` message, then its cause and its fix;
never a traceback.
"""

import posix
import sys

from nsgate.cli.admin.common import Out, Usage, parse, words
from nsgate.errors import Refusal

VERSION = "0.1.0"  # as pyproject.toml
USAGE = """usage: nsgate check [--json]
       nsgate explain [USER] [--json]
       nsgate subid add USER START COUNT [-g|--gid]
       nsgate subid remove USER START COUNT [-g|--gid]
       nsgate subid allocate USER [--count N | --if-missing] [-g|--gid]
       nsgate nics list [--json]
       nsgate nics gc
       nsgate network apply
       nsgate network show [--json]
       nsgate session   (run by pam_exec(8) from a PAM session line)
       nsgate help | --help | --version
"""
HELP = USAGE + """
  check      lint /etc/subuid, /etc/subgid, /etc/lxc/lxc-usernet, /run/lxc/nics,
             /etc/nsgate/session.conf, the ownership of the files nsgate trusts, and the
             install; exit 1 on errors
  explain    a user's subordinate ranges, nic grants with current use, and what a login
             gets from /etc/nsgate/session.conf (yourself, or anyone as root)
  subid      add, remove or allocate a range in /etc/subuid (-g: /etc/subgid), as root,
             under the lock useradd and usermod use, with a backup (FILE-)
  nics       list the nic database with liveness; gc removes lines of vanished nics (root)
  network    apply: make the host what /etc/nsgate/networks.conf asks (the nftables
             table inet nsgate, forwarding, the private bridges' gateway addresses), as
             root, idempotently; show: the plan, the table's state, forwarding
  session    the PAM session hook (pam_exec, as root): subordinate ids and a delegated
             cgroup for the user at login, per /etc/nsgate/session.conf; always exits 0

Exit status: 0 success, 1 errors found or the operation refused or failed, 2 usage error.
See nsgate(8).
"""


OUTPUT_FAILED = "cannot write to standard output (what the command did is done)"


def main(argv: list[str], *, libdir: str, libexecdir: str) -> int:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # any locale: a name it cannot show is escaped
            stream.reconfigure(errors="backslashreplace")
    out = Out()
    try:
        status = _dispatch(argv, out, libdir, libexecdir)
    except Usage as err:
        sys.stderr.write(f"nsgate: {err}\nTry 'nsgate help'.\n")
        return 2
    except Refusal as refusal:
        if refusal.usage:
            sys.stderr.write(f"nsgate: {refusal.first}\nTry 'nsgate help'.\n")
            return 2
        sys.stderr.write(refusal.text("nsgate"))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("nsgate: interrupted\n")
        return 130
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        sys.stderr.write(f"nsgate: cannot go on:{where}: {err.strerror or err}\n"
                         "nsgate: nothing more was done\n")
        return 1
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a traceback
        sys.stderr.write(f"nsgate: internal error ({type(err).__name__}: {err}); nothing more "
                         "was done\n")
        return 1
    try:
        if out.lines:
            sys.stdout.write("\n".join(out.lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        posix.dup2(posix.open("/dev/null", posix.O_WRONLY), 1)
    except OSError as err:
        posix.dup2(posix.open("/dev/null", posix.O_WRONLY), 1)  # nothing left to flush at exit
        sys.stderr.write(f"nsgate: {OUTPUT_FAILED}: {err.strerror}\n")
        return 1
    return status


def _dispatch(argv: list[str], out: Out, libdir: str, libexecdir: str) -> int:
    if not argv:
        raise Usage("a command is needed")
    verb, rest = argv[0], argv[1:]
    options = argv[:argv.index("--")] if "--" in argv else argv
    if verb in ("help", "-h") or "--help" in options:
        out.say(HELP.rstrip("\n"))
        return 0
    if verb == "--version":
        out.say(f"nsgate {VERSION}")
        return 0
    if verb == "check":
        args = parse(rest, {"--json"})
        words(args, 0, 0, "check takes no arguments")
        from nsgate.cli.admin import check

        return check.run(out, args, libdir, libexecdir)
    if verb == "explain":
        args = parse(rest, {"--json"})
        given = words(args, 0, 1, "usage: nsgate explain [USER] [--json]")
        from nsgate.cli.admin import explain

        return explain.run(out, args, given[0] if given else None)
    if verb == "subid":
        from nsgate.cli.admin import subid

        return subid.run(out, rest)
    if verb == "session":
        from nsgate.cli import session

        return session.run(rest)
    if verb == "nics":
        if not rest or rest[0] not in ("list", "gc"):
            raise Usage("usage: nsgate nics list [--json] | nsgate nics gc")
        args = parse(rest[1:], {"--json"} if rest[0] == "list" else set())
        words(args, 0, 0, f"nics {rest[0]} takes no arguments")
        from nsgate.cli.admin import nics

        return nics.list_nics(out, args) if rest[0] == "list" else nics.gc(out)
    if verb == "network":
        if not rest or rest[0] not in ("apply", "show"):
            raise Usage("usage: nsgate network apply | nsgate network show [--json]")
        args = parse(rest[1:], {"--json"} if rest[0] == "show" else set())
        words(args, 0, 0, f"network {rest[0]} takes no arguments")
        from nsgate.cli.admin import network

        return network.apply(out) if rest[0] == "apply" else network.show(out, args)
    raise Usage(f"unknown command {verb!r}")

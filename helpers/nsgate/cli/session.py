"""nsgate session: the PAM session hook (nsgate(8), SESSION HOOK), run as root by pam_exec(8)
from the session line of etc/pam.d/nsgate:

    session optional pam_exec.so quiet seteuid /usr/local/bin/nsgate session

At open_session, for the user PAM names, as /etc/nsgate/session.conf says (policy/session_conf):
first the delegated cgroup with its limits, the session's process (pam_exec's caller, this
process's parent) moved in (system/cgroups.py), since the login forks the user's shell from
that process as soon as the hook returns; then, for each of /etc/subuid and /etc/subgid, a range
allocated if no subid source holds any for the user (system/subid_db.py, then the writer, under
shadow's locks). At close_session: the cgroup's close (the process back where it was, the
user's tree removed once empty); it depends on no setting, so it runs whatever session.conf
holds.

A login is never refused and never waits beyond BOUND_SECONDS: the work runs in a child that
holds nothing of the login's (system/bounded_child.py), the hook exits 0 whatever happens, and
every outcome goes to syslog, facility authpriv, ident `nsgate-session`, with its reason; each
step either completes or leaves nothing behind (its own module's rule). Syslog is written by
that child only: a full /dev/log queue, which any user can cause, holds the child, never the
login. Unexpected calls:

- not started by pam_exec (its environment does not end with pam_exec's items): a message on
  stderr, exit 2 (a person ran it);
- arguments, or not all of real, effective and saved uid root (pam_exec runs a command with its
  caller's real uid: `seteuid` on the line makes a su or sudo session root's throughout), or a
  module type other than open_session and close_session (an auth, account or password line), or
  no PAM_USER, or a user the passwd database does not know: logged, nothing done;
- a session.conf nsgate cannot trust or parse: logged with its line, nothing done at open.
"""

import posix
import sys
import time

from nsgate.errors import Refusal
from nsgate.policy import pam_exec_env
from nsgate.system import audit, bounded_child, own_environ

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsgate.policy.session_conf import Settings

PROG = "nsgate-session"
BOUND_SECONDS = 5.0
SESSION_CONF = "/etc/nsgate/session.conf"
LOGIN_DEFS = "/etc/login.defs"
NSSWITCH = "/etc/nsswitch.conf"
NOT_FROM_PAM = ("nsgate session: run by pam_exec(8) from a PAM session line, not by hand: "
                "see nsgate(8), SESSION HOOK\n")


def run(argv: list[str]) -> int:
    """The hook; its status is 0 whenever pam_exec ran it."""
    started = time.monotonic()
    try:
        return _run(argv, started)
    except BaseException as err:  # noqa: BLE001 - never a traceback, never a refused login
        try:
            _log_apart(f"internal error ({type(err).__name__}: {err}); nothing more was done",
                       failed=True)
        except BaseException:  # noqa: BLE001 - not even that: pam_exec still gets 0
            pass
        return 0


def _run(argv: list[str], started: float) -> int:
    try:
        call = pam_exec_env.parse(own_environ.read())
    except OSError as err:
        _log_apart(f"cannot read {own_environ.ENVIRON} ({err.strerror}), which says what PAM "
                   "asks: nothing done", failed=True)
        return 0
    if call is None:
        sys.stderr.write(NOT_FROM_PAM)
        return 2
    kind = _shown(call.type)
    if argv:
        _log_apart(f"{kind}: `nsgate session` takes no arguments, not {' '.join(argv)!r}: "
                   "nothing done; fix the pam_exec line", failed=True)
        return 0
    ids = posix.getresuid()
    if ids != (0, 0, 0):
        _log_apart(f"{kind}: run with uids {ids[0]}/{ids[1]}/{ids[2]} (real/effective/saved), "
                   "not root's alone: nothing done; pam_exec needs the `seteuid` option on "
                   "this line", failed=True)
        return 0
    if call.type not in (b"open_session", b"close_session"):
        _log_apart(f"called for {kind}: nsgate session acts on a `session` line only (PAM "
                   f"service {_shown(call.service)}): nothing done", failed=True)
        return 0
    if not call.user:
        _log_apart(f"{kind}: PAM names no user (service {_shown(call.service)}): nothing done",
                   failed=True)
        return 0
    session_pid = posix.getppid()
    what = (f"{kind} for {_shown(call.user)}, session process {session_pid} (service "
            f"{_shown(call.service)})")
    if session_pid <= 1:
        _log_apart(f"{what}: the process that opened the session is gone: nothing done",
                   failed=True)
        return 0
    work = _open if call.type == b"open_session" else _close
    user = call.user
    bounded_child.run(lambda: _worker(lambda: work(what, user, session_pid, started)),
                      BOUND_SECONDS, lambda why: _log(f"{what}: {why}; nothing done",
                                                      failed=True))
    return 0


def _worker(work: "Callable[[], None]") -> None:
    """The child's whole run: root alone, then the work; whatever it raises is logged."""
    from nsgate.system import credentials

    try:
        credentials.become_root_alone()
        work()
    except BaseException as err:  # noqa: BLE001 - the worker's last line of defence
        _log(f"internal error ({type(err).__name__}: {err}); nothing more was done",
             failed=True)


def _open(what: str, user: bytes, session_pid: int, started: float) -> None:
    from nsgate.system import accounts

    entry = accounts.by_name(user)
    if entry is None:
        _log(f"{what}: no such user in the passwd database: nothing done", failed=True)
        return
    name, uid, gid = entry
    what = f"{what}, uid {uid}"
    try:
        login_defs = _read(LOGIN_DEFS)
        settings = _settings(name, uid, gid, login_defs)
    except Refusal as refusal:
        _log(f"{what}: {_reason(refusal)}: nothing done", failed=True)
        return
    done: list[str] = []
    if settings.cgroup:
        done += _step(what, "cgroup", _open_cgroup, uid, gid, settings.limits, session_pid)
    if settings.subids:
        nsswitch = None
        try:
            nsswitch = _read(NSSWITCH)
        except Refusal as refusal:
            _log(f"{what}: subordinate ids: {_reason(refusal)}: none allocated", failed=True)
        else:
            for kind in ("uid", "gid"):
                done += _step(what, f"sub{kind}s", _ensure_subids, kind, name, uid,
                              login_defs, nsswitch)
    if not settings.cgroup and not settings.subids:
        done.append(f"{SESSION_CONF} gives no cgroup ({settings.origin.get('cgroup')}) and no "
                    f"subordinate ids ({settings.origin.get('subids')})")
    _log(f"{what}: " + ("; ".join(done) if done else "nothing done") + _late(started))


def _close(what: str, user: bytes, session_pid: int, started: float) -> None:
    from nsgate.system import accounts

    entry = accounts.by_name(user)
    if entry is None:
        _log(f"{what}: no such user in the passwd database: nothing done", failed=True)
        return
    uid = entry[1]
    what = f"{what}, uid {uid}"
    done = _step(what, "cgroup", _close_cgroup, uid, session_pid)
    if done:
        _log(f"{what}: " + "; ".join(done) + _late(started))


def _settings(name: bytes, uid: int, gid: int, login_defs: bytes) -> "Settings":
    from nsgate.policy import session_conf
    from nsgate.system import accounts

    data = _read(SESSION_CONF)
    try:
        conf = session_conf.parse(data or b"")
    except Refusal as refusal:
        raise Refusal(f"{SESSION_CONF}: {refusal.first}", *refusal.details) from None
    return conf.settings_for(name, uid, accounts.group_names_of(name, gid), login_defs)


def _open_cgroup(uid: int, gid: int, limits: dict[str, str], session_pid: int) -> str:
    from nsgate.system import cgroups

    notes = cgroups.open_session(uid, gid, limits, session_pid)
    shown = " ".join(f"{key}={value}" for key, value in sorted(limits.items())) or "none"
    if cgroups.host_kind() == "systemd":  # systemd delegates user@.service; pam_systemd moves
        done = f"cgroup: limits {shown} set on user-{uid}.slice"
    else:
        done = f"cgroup: the session process is in the user's delegated cgroup, limits {shown}"
    return done + "".join(f" (note: {note})" for note in notes)


def _close_cgroup(uid: int, session_pid: int) -> str:
    from nsgate.system import cgroups

    notes = cgroups.close_session(uid, session_pid)
    return "cgroup: closed" + "".join(f" ({note})" for note in notes)


def _ensure_subids(kind: str, name: bytes, uid: int, login_defs: bytes,
                   nsswitch: bytes | None) -> str:
    from nsgate.system import accounts, subid_db, subid_writer

    source = subid_db.holding_source(kind, name, uid, nsswitch)
    if source is not None:
        return f"sub{kind}s: held in {source}"
    report = subid_writer.ensure(kind, name, uid, accounts.load(), login_defs)
    return f"sub{kind}s: {report}" if report else f"sub{kind}s: held (added meanwhile)"


def _step(what: str, name: str, step: "Callable[..., str]", *args: object) -> list[str]:
    """One step's outcome for the summary; a failure is logged on its own line, and the next
    step still runs (each leaves nothing behind when it fails)."""
    try:
        return [step(*args)]
    except Refusal as refusal:
        _log(f"{what}: {name}: {_reason(refusal)}", failed=True)
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        _log(f"{what}: {name}: cannot go on:{where}: {err.strerror or err}", failed=True)
    return []


def _read(path: str) -> bytes:
    from nsgate.system import files

    return files.read_small(path) or b""


def _late(started: float) -> str:
    elapsed = time.monotonic() - started
    if elapsed <= BOUND_SECONDS:
        return ""
    return f" (after {elapsed:.1f} s: the login went on after {BOUND_SECONDS:.0f} s)"


def _reason(refusal: Refusal) -> str:
    return "; ".join((refusal.first, *refusal.details))


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _shown(value: bytes) -> str:
    """A value pam_exec passed, for the log: as it is if it is a plain word (a user or service
    name, a module type), else quoted, so that no text in it reads as the hook's own words."""
    if value and all(c in _PLAIN for c in value) and value[:1] != b"-":
        return _text(value)
    return repr(_text(value))


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@$")


def _log(text: str, *, failed: bool = False) -> None:
    audit.record_action(PROG, text, failed=failed)


def _log_apart(text: str, *, failed: bool = False) -> None:
    """Log from a child the caller waits for at most BOUND_SECONDS (a full /dev/log queue
    would block the sender)."""
    bounded_child.run(lambda: _log(text, failed=failed), BOUND_SECONDS, lambda why: None)

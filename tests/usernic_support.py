"""Shared pieces of the lxc-user-nic tests: "containers" (a test user's own user + network
namespace), the links on both sides as `ip -d -j link` reports them, the nic database, running
nsgate's helper and the reference, and liblxc's parse of the result line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from tests.support import PATIENCE, SANDBOX, User, helper, transport_privs

NSGATE_NIC = helper("lxc-user-nic")
REFERENCE_NIC = "/usr/libexec/lxc/lxc-user-nic"
DB_DIR = Path("/run/lxc")
DB = DB_DIR / "nics"
LOCK = DB_DIR / "nics.lock"
WORK = SANDBOX / "usernic"  # root's scratch space (fake programs, logs, secret directories)
IFNAMSIZ = 16

# lxc-user-nic.md §3, verbatim.
USAGE = (b"Description:\n"
         b"  Manage nics in another network namespace\n"
         b"\n"
         b"Usage:\n"
         b"  lxc-user-nic [command]\n"
         b"\n"
         b"Available Commands:\n"
         b"  create {lxcpath} {name} {pid} {type} {bridge} {container nicname}\n"
         b"  delete {lxcpath} {name} {/proc/<pid>/ns/net} {type} {bridge} {container nicname}\n")

READY = ["sh", "-c", "echo ready; exec sleep 600"]


def host_veth_pattern(user: User) -> re.Pattern[str]:
    return re.compile(rf"veth{user.uid}_[0-9A-Za-z]{{4}}")


def setpriv(user: User | int, argv: Sequence[str], *,
            groups: str | Sequence[int] = "init") -> list[str]:
    """argv run with `user`'s real and effective ids; `groups`: "init" (its groups, as a login
    gives them), "clear" (no supplementary groups) or an explicit list of gids. Under
    no_new_privs when it runs an nsgate helper through the service transport."""
    uid, gid = (user, user) if isinstance(user, int) else (user.uid, user.gid)
    if groups == "init":
        group_args = ["--init-groups"]
    elif groups == "clear":
        group_args = ["--clear-groups"]
    else:
        group_args = ["--groups=" + ",".join(str(g) for g in groups)]
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args,
            *transport_privs(argv), "--", *argv]


def usernic(user: User | int, *args: str | int, impl: str = "nsgate",
            groups: str | Sequence[int] = "init", env: dict[str, str] | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    program = NSGATE_NIC if impl == "nsgate" else REFERENCE_NIC
    return subprocess.run(setpriv(user, [program, *map(str, args)], groups=groups),
                          capture_output=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def create(user: User, pid: int | str, bridge: str = "br0", name: str | None = None,
           **kwargs) -> subprocess.CompletedProcess[bytes]:
    extra = [] if name is None else [name]
    return usernic(user, "create", "/var/lib/lxc", "c1", pid, "veth", bridge, *extra, **kwargs)


def create_popen(user: User, pid: int, bridge: str = "br0", name: str | None = None,
                 **kwargs) -> subprocess.Popen[bytes]:
    extra = [] if name is None else [name]
    argv = setpriv(user, [NSGATE_NIC, "create", "/var/lib/lxc", "c1", str(pid), "veth", bridge,
                          *extra])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, **kwargs)


def delete(user: User, path: str, bridge: str, dev: str | None, nic_type: str = "veth",
           **kwargs) -> subprocess.CompletedProcess[bytes]:
    extra = [] if dev is None else [dev]
    return usernic(user, "delete", "x", "x", path, nic_type, bridge, *extra, **kwargs)


# --- links -------------------------------------------------------------------------------


def ip_links(pid: int | None = None) -> dict[str, dict]:
    """name -> `ip -d -j link` record, in the test's netns or in the netns of `pid`."""
    argv = ["ip", "-d", "-j", "link", "show"]
    if pid is not None:
        argv = ["nsenter", f"--net=/proc/{pid}/ns/net", *argv]
    out = subprocess.run(argv, capture_output=True, check=True, timeout=10).stdout
    return {link["ifname"]: link for link in json.loads(out)}


NET_ADDR_RANDOM, NET_ADDR_SET = 1, 3  # include/linux/netdevice.h


def addr_assign_type(ifname: str, pid: int | None = None) -> int:
    """How the kernel says `ifname`'s MAC was assigned (random at birth, or set later), in the
    test's netns or in the netns of `pid`; read from a sysfs mounted for that netns."""
    net = f"/proc/{pid}/ns/net" if pid is not None else "/proc/self/ns/net"
    out = subprocess.run(
        ["nsenter", f"--net={net}", "unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t sysfs sysfs /sys && cat "/sys/class/net/$1/addr_assign_type"', "sh", ifname],
        capture_output=True, check=True, timeout=10).stdout
    return int(out)


def link_kind(link: dict) -> str | None:
    return link.get("linkinfo", {}).get("info_kind")


def is_up(link: dict) -> bool:
    return "UP" in link.get("flags", [])


def master_of(link: dict) -> str | None:
    return link.get("master")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def add_bridge(name: str, mtu: int | None = None) -> None:
    ip("link", "add", name, "type", "bridge")
    if mtu is not None:
        ip("link", "set", name, "mtu", str(mtu))
    ip("link", "set", name, "up")


def add_veth(name: str) -> None:
    """A plain link in the test's netns: one end of a veth pair (peer `name` + "p")."""
    ip("link", "add", name, "type", "veth", "peer", "name", name + "p")


def wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


# --- containers and other target processes -------------------------------------------------


class Proc:
    """A long-lived target process started with `argv` that prints "ready" once set up."""

    started: ClassVar[list[Proc]] = []

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        Proc.started.append(self)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == b"ready\n", f"target did not start: {line!r}"
        self.pid = self.proc.pid
        self.netns = f"/proc/{self.pid}/ns/net"

    @classmethod
    def container(cls, user: User) -> Proc:
        """The test user's own `unshare --user --map-root-user --net` process."""
        return cls(setpriv(user, ["unshare", "--user", "--map-root-user", "--net", "--",
                                  *READY]))

    @classmethod
    def plain(cls, user: User | None) -> Proc:
        """A process of `user` (root if None) in the test's own netns."""
        return cls(READY if user is None else setpriv(user, READY))

    @classmethod
    def in_root_netns(cls, user: User | None) -> Proc:
        """A process of `user` (root if None) in a netns root created (owned by the initial
        user namespace)."""
        inner = READY if user is None else setpriv(user, READY)
        return cls(["unshare", "--net", "--", *inner])

    def links(self) -> dict[str, dict]:
        return ip_links(self.pid)

    def netns_id(self) -> int:
        return os.stat(self.netns).st_ino

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    @classmethod
    def stop_all(cls) -> None:
        while cls.started:
            cls.started.pop().stop()


# --- the database ----------------------------------------------------------------------------


def db_lines() -> list[str] | None:
    """The database's lines, None if the file does not exist."""
    if not DB.exists():
        return None
    return DB.read_text().splitlines()


def db_entries() -> list[tuple[str, str, str, str]]:
    return [tuple(line.split(" ")) for line in db_lines() or []]  # type: ignore[misc]


def write_db(lines: Sequence[str]) -> None:
    DB.write_text("".join(line + "\n" for line in lines))
    os.chmod(DB, 0o600)


def clean_db() -> None:
    for path in DB_DIR.iterdir():
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


# --- liblxc's reading of the result (network.c: lxc_create_network_unpriv_exec) -------------


def _strtok(text: bytes, start: int) -> tuple[bytes | None, int]:
    """strtok_r(…, ":", …): skip leading delimiters, the token runs to the next one."""
    while start < len(text) and text[start:start + 1] == b":":
        start += 1
    if start >= len(text):
        return None, start
    end = text.find(b":", start)
    if end < 0:
        return text[start:], len(text)
    return text[start:end], end + 1


def _safe_int(token: bytes) -> int:
    """lxc_safe_int: strtol(token, &end, 0) must consume the whole token and fit in an int."""
    text = token.decode("ascii").lstrip(" \t\n\v\f\r")
    sign = -1 if text.startswith("-") else 1
    if text[:1] in ("+", "-"):
        text = text[1:]
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        value = int(text[2:], 16)
    elif re.fullmatch(r"0[0-7]*", text):
        value = int(text, 8)
    elif re.fullmatch(r"[1-9][0-9]*", text):
        value = int(text)
    else:
        raise ValueError(f"Failed to convert string {token!r} to integer")
    value *= sign
    if not -2**31 <= value < 2**31:
        raise ValueError(f"{token!r} is out of the range of an int")
    return value


def liblxc_parse(buffer: bytes) -> tuple[str, int, str, int]:
    """What liblxc makes of the bytes it read (one read() of at most PATH_MAX from the pipe that
    carries both stdout and stderr): the last byte is overwritten with NUL, then four
    ':'-separated tokens: container name (< IFNAMSIZ), its ifindex, host name (< IFNAMSIZ), its
    ifindex. Raises ValueError where liblxc fails."""
    if not buffer:
        raise ValueError("nothing read")
    text = buffer[:-1].split(b"\0", 1)[0]
    tokens: list[bytes] = []
    pos = 0
    for _ in range(4):
        token, pos = _strtok(text, pos)
        if token is None:
            raise ValueError("Failed to parse lxc-user-nic output")
        tokens.append(token)
    name, index, host, host_index = tokens
    if len(name) >= IFNAMSIZ:
        raise ValueError("Container side veth device name returned by lxc-user-nic is too long")
    if len(host) >= IFNAMSIZ:
        raise ValueError("Host side veth device name returned by lxc-user-nic is too long")
    return name.decode(), _safe_int(index), host.decode(), _safe_int(host_index)


def run_like_liblxc(argv: Sequence[str]) -> tuple[int, bytes]:
    """Run argv as liblxc runs lxc-user-nic: stdout and stderr dup'd onto one pipe, one read of
    at most PATH_MAX (4096) bytes, then wait. (exit status, bytes read)."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(list(argv), stdout=write_end, stderr=write_end,
                                stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    try:
        data = os.read(read_end, 4096)
    finally:
        os.close(read_end)
    return proc.wait(timeout=20), data


@contextlib.contextmanager
def sysfs_of_this_netns() -> Iterator[None]:
    """A sysfs of the test's own netns on /sys, for the reference, which finds bridges and live
    nics through /sys/class/net (it shows the links of the netns that mounted sysfs). The cgroup
    hierarchies stay where they were (/sys/fs/cgroup): nsgate's helper leaves the caller's
    cgroups through them."""
    cgroups = SANDBOX / "cgroup-keep"
    cgroups.mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["mount", "--rbind", "/sys/fs/cgroup", str(cgroups)], check=True)
    try:
        subprocess.run(["mount", "-t", "sysfs", "nsgate-sysfs", "/sys"], check=True)
        try:
            subprocess.run(["mount", "--rbind", str(cgroups), "/sys/fs/cgroup"], check=True)
            yield
        finally:
            subprocess.run(["umount", "-R", "/sys"], check=True)
    finally:
        subprocess.run(["umount", "-R", str(cgroups)], check=True)

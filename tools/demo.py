"""nsgate's built-in demo (`make demo`, as root, after `make install`).

Creates the demo user `nsgate-demo` with subordinate ranges if absent (`nsgate subid allocate`),
shows them as `nsgate explain` does, then, as that user:
maps a fresh user namespace through nsgate's newuidmap/newgidmap and prints the kernel's map;
shows a refused request with nsgate's diagnostic; runs a real client (util-linux unshare
--map-auto) with nsgate's helpers first on PATH; and, in a private mount namespace with a /run of
its own (so a service of the host's is neither used nor disturbed), starts nsgated and maps a
namespace for a caller under no_new_privs, where a setuid helper cannot work, then stops it and
shows the refusal naming the fix.
"""

from __future__ import annotations

import pwd
import subprocess
import sys
import time
from pathlib import Path

USER = "nsgate-demo"


def sh(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, **kwargs)


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ensure_user(libexec: Path, nsgate: Path) -> pwd.struct_passwd:
    """The demo user, with a subordinate uid and gid range each: allocated by `nsgate subid
    allocate`, which takes the next free range of login.defs' pool as useradd would (and
    creates /etc/subuid and /etc/subgid where a fresh system has none)."""
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True)
        entry = pwd.getpwnam(USER)
        print(f"created user {USER} (uid {entry.pw_uid})", flush=True)
    for flag in ([], ["-g"]):
        if sh([str(libexec / "getsubids"), *flag, USER]).returncode != 0:
            subprocess.run([str(nsgate), "subid", "allocate", USER, *flag], check=True)
    return entry


def as_user(entry: pwd.struct_passwd, argv: list[str], **kwargs):
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            "--", *argv]


def main(libexec: Path, nsgate: Path) -> int:
    entry = ensure_user(libexec, nsgate)
    ranges = sh([str(libexec / "getsubids"), USER]).stdout.split()
    start, count = int(ranges[2]), int(ranges[3])
    say(f"{USER} owns subordinate uids (nsgate's getsubids)")
    print(sh([str(libexec / "getsubids"), USER]).stdout, end="")
    say(f"the administrator's view: nsgate explain {USER}")
    print(sh([str(nsgate), "explain", USER]).stdout, end="")

    target = subprocess.Popen(as_user(entry, ["unshare", "--user", "--", "sh", "-c",
                                              "echo ready; exec sleep 60"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        uid = entry.pw_uid
        say(f"as {USER}: newuidmap {target.pid} 0 {uid} 1 1 {start} {count}")
        mapped = sh(as_user(entry, [str(libexec / "newuidmap"), str(target.pid), "0", str(uid),
                                    "1", "1", str(start), str(count)]))
        print(f"exit {mapped.returncode}{': ' + mapped.stderr if mapped.stderr else ''}")
        print(f"the kernel's /proc/{target.pid}/uid_map:")
        print(Path(f"/proc/{target.pid}/uid_map").read_text(), end="")
        if mapped.returncode != 0:
            return 1

        say(f"as {USER}: newgidmap {target.pid} 0 {entry.pw_gid} 1 (a self-map only)")
        gid = sh(as_user(entry, [str(libexec / "newgidmap"), str(target.pid), "0",
                                 str(entry.pw_gid), "1"]))
        print(f"exit {gid.returncode}; gid_map: "
              f"{Path(f'/proc/{target.pid}/gid_map').read_text().strip()}; setgroups: "
              f"{Path(f'/proc/{target.pid}/setgroups').read_text().strip()} (CVE-2018-7169)")
    finally:
        target.kill()
        target.wait()

    refused_target = subprocess.Popen(as_user(entry, ["unshare", "--user", "--", "sh", "-c",
                                                      "echo ready; exec sleep 60"]),
                                      stdout=subprocess.PIPE, text=True)
    try:
        assert refused_target.stdout is not None
        refused_target.stdout.readline()
        wanted = start + count
        say(f"as {USER}: newuidmap {refused_target.pid} 0 {wanted} 10 (ids it does not own)")
        refused = sh(as_user(entry, [str(libexec / "newuidmap"), str(refused_target.pid), "0",
                                     str(wanted), "10"]))
        print(f"exit {refused.returncode}")
        print(refused.stderr, end="")
        print(f"uid_map afterwards: {Path(f'/proc/{refused_target.pid}/uid_map').read_text()!r}")
    finally:
        refused_target.kill()
        refused_target.wait()

    say("a real client: unshare --user --map-auto, with nsgate's helpers first on PATH")
    client = sh(as_user(entry, ["unshare", "--user", "--map-auto", "--", "cat",
                                "/proc/self/uid_map"]),
                env={"PATH": f"{libexec}:/usr/sbin:/usr/bin:/sbin:/bin"})
    print(f"exit {client.returncode}")
    print(client.stdout + client.stderr, end="", flush=True)
    served = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                             "-I", __file__, "--service", str(libexec), str(nsgate)])
    return 0 if client.returncode == 0 and refused.returncode == 1 and served.returncode == 0 \
        else 1


def service_part(libexec: Path) -> int:
    """In a private mount namespace with its own /run: nsgated serving a no_new_privs caller."""
    entry = pwd.getpwnam(USER)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsgate-demo", "/run"],
                   check=True)
    service = subprocess.Popen([str(libexec / "nsgated")])
    nnp = ["setpriv", "--no-new-privs", "--"]
    try:
        for _ in range(2000):
            if Path("/run/nsgate/io.socket").exists():
                break
            time.sleep(0.005)
        mapped = _map_self(entry, libexec, nnp)
        say(f"nsgated running: as {USER} under no_new_privs, newuidmap PID 0 {entry.pw_uid} 1")
        print(f"exit {mapped[0]}; uid_map: {mapped[1]}", flush=True)
    finally:
        service.terminate()
        service.wait()
    stopped = _map_self(entry, libexec, nnp)
    say(f"nsgated stopped: the same request as {USER} under no_new_privs")
    print(f"exit {stopped[0]}")
    print(stopped[2], end="", flush=True)
    return 0 if mapped[0] == 0 and stopped[0] == 1 else 1


def _map_self(entry: pwd.struct_passwd, libexec: Path, prefix: list[str]) -> tuple[int, str, str]:
    """(exit status, the kernel's uid_map, stderr) of a self-map by the demo user."""
    target = subprocess.Popen(as_user(entry, ["unshare", "--user", "--", "sh", "-c",
                                              "echo ready; exec sleep 60"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        result = sh(as_user(entry, [*prefix, str(libexec / "newuidmap"), str(target.pid), "0",
                                    str(entry.pw_uid), "1"]))
        uid_map = " ".join(Path(f"/proc/{target.pid}/uid_map").read_text().split())
        return result.returncode, uid_map, result.stderr
    finally:
        target.kill()
        target.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--service"]:
        sys.exit(service_part(Path(sys.argv[2])))
    libexec_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/local/libexec/nsgate")
    sys.exit(main(libexec_dir, Path(sys.argv[2]) if len(sys.argv) > 2
                  else libexec_dir.parent.parent / "bin" / "nsgate"))

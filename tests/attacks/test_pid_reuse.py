"""C10/B13: PID reuse between the helper's checks and its action (best effort: a pid cannot be
reused at will on a busy host, so the test makes its own pid namespace).

A root driver runs as init of a fresh pid namespace (`unshare --pid --fork --mount-proc`). Each
round: alice's target starts (her user namespace, or her container), alice runs the helper on
its pid, and after a random delay spread over the run the target is killed and its pid handed
(through /proc/sys/kernel/ns_last_pid) to a victim of bob's of the same kind. Whatever the
helper answered, the victim's maps stay unwritten and its netns holds only `lo`, and so does a
bystander of alice's that was never named: nothing is created in any other process's namespace.
getsubids takes no pid: not applicable.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.attacks.conftest import (
    BRIDGE,
    PYTHON,
    Result,
    assert_clear_error,
    attack,
    count_probe,
    host_veths,
    verify,
    wait_for,
)
from tests.support import ALICE, BOB, transport_privs
from tests.support import helper as helper_path

pytestmark = [pytest.mark.attack("C10 PID reuse"),
              pytest.mark.helpers("newuidmap", "newgidmap", "lxc-user-nic"),
              pytest.mark.usefixtures("transport")]

ROUNDS = 16

DRIVER = r"""
import json, os, random, subprocess, sys, time
cfg = json.loads(sys.argv[1])
net = cfg["kind"] == "nic"
READY = ["sh", "-c", "echo ready; exec sleep 600"]

def setpriv(uid, argv, privs=()):
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--init-groups", *privs, "--", *argv]

def start(uid):
    unshare = ["unshare", "--user"] + (["--map-root-user", "--net"] if net else [])
    proc = subprocess.Popen(setpriv(uid, [*unshare, "--", *READY]), stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"ready\n"
    return proc

def args_for(pid):
    if net:
        return ["create", "/var/lib/lxc", "c1", str(pid), "veth", cfg["bridge"]]
    return [str(pid), "0", "200000", "10"]

def state(pid):
    if net:
        with open(f"/proc/{pid}/net/dev") as f:
            return sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    return [open(f"/proc/{pid}/{name}").read() for name in ("uid_map", "gid_map", "setgroups")]

def stop(proc):
    proc.kill()
    proc.wait()

rng = random.Random(cfg["seed"])
bystander = start(cfg["alice"])
bystander_before = state(bystander.pid)
# an undisturbed run, to spread the kills over a whole run
target = start(cfg["alice"])
started = time.monotonic()
subprocess.run(setpriv(cfg["alice"], [cfg["helper"], *args_for(target.pid)], cfg["privs"]),
               check=True, capture_output=True)
span = time.monotonic() - started
stop(target)
rounds = []
for i in range(cfg["rounds"]):
    target = start(cfg["alice"])
    victim_before = None
    helper = subprocess.Popen(setpriv(cfg["alice"], [cfg["helper"], *args_for(target.pid)],
                                      cfg["privs"]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    time.sleep(rng.uniform(0, span))
    stop(target)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(target.pid - 1))
    victim = start(cfg["bob"])
    victim_before = state(victim.pid)
    out, err = helper.communicate(timeout=30)
    rounds.append({"rc": helper.returncode, "out": out.hex(), "err": err.hex(),
                   "reused": victim.pid == target.pid, "victim_before": victim_before,
                   "victim_after": state(victim.pid)})
    stop(victim)
print(json.dumps({"rounds": rounds, "span": span, "bystander_before": bystander_before,
                  "bystander_after": state(bystander.pid)}))
stop(bystander)
"""

UNWRITTEN = ["", "", "allow\n"]


def test_pid_reused_by_another_users_namespace(helper, scenario):
    kind = "nic" if helper == "lxc-user-nic" else "map"
    cfg = {"helper": helper_path(helper), "kind": kind, "rounds": ROUNDS, "seed": helper,
           "alice": ALICE.uid, "bob": BOB.uid, "bridge": BRIDGE, "privs": transport_privs()}
    proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--", PYTHON, "-I",
                           "-c", DRIVER, json.dumps(cfg)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    count_probe(len(report["rounds"]))
    clean = ["lo"] if kind == "nic" else UNWRITTEN
    assert report["bystander_before"] == report["bystander_after"] == clean, report
    reused = 0
    outcomes: dict[int, int] = {}
    for round_ in report["rounds"]:
        result = Result(round_["rc"], bytes.fromhex(round_["out"]), bytes.fromhex(round_["err"]))
        assert result.rc in (0, 1), result
        assert b"Traceback" not in result.err
        if result.rc == 1:
            assert result.out == b""
            assert_clear_error(helper, result.err)
        assert round_["victim_before"] == round_["victim_after"] == clean, round_
        reused += round_["reused"]
        outcomes[result.rc] = outcomes.get(result.rc, 0) + 1
    assert reused >= ROUNDS // 2, f"the pid was reused in only {reused} rounds"
    if kind == "nic":
        # the pairs made for dead targets go with their netns; the next create prunes their lines
        wait_for(lambda: not host_veths(), what="the host ends of dead targets to go")
        request = scenario.request()
        assert verify(request, attack(request.argv)) == "done"

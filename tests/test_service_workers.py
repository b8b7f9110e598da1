"""nsgated's idle workers preparing for a request (system/memory.py), read from the kernel: a
prepared worker has its own copy of every page it shared with the service and no page the
service never touched; a request handed to a worker still preparing puts it back to the
service's priority, stops the preparation and is served at once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.service_support import CLIENT, LIBDIR, Nsgated, ask
from tests.support import ALICE, PATIENCE, as_user, wait_for, wchan

PRESENT, EXCLUSIVE, FILE_OR_SHARED = 1 << 63, 1 << 56, 1 << 61
PAGE = os.sysconf("SC_PAGE_SIZE")
WAITING_FOR_A_CONNECTION = "__skb_wait_for_more_packets"  # take_over's recvmsg


def _private_anon_pages(pid: int) -> dict[int, int]:
    """Address -> pagemap entry of every page of `pid`'s private writable mappings that is
    present and not the file's own page (a copy-on-write or anonymous page)."""
    pages = {}
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split()
            if fields[1][1] != "w" or fields[1][3] != "p":
                continue
            start, end = (int(part, 16) for part in fields[0].split("-"))
            data = os.pread(fd, (end - start) // PAGE * 8, start // PAGE * 8)
            for index, entry in enumerate(memoryview(data).cast("Q")):
                if entry & PRESENT and not entry & FILE_OR_SHARED:
                    pages[start + index * PAGE] = entry
    finally:
        os.close(fd)
    return pages


def _tracer(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:")[1].split()[0])


def _prepared_worker(service: Nsgated) -> int:
    """A worker that is prepared and waits for a connection. (The fixture's probe of the
    socket, a connection without a request, may have used up the first one.)"""
    def waiting() -> list[int]:
        return [pid for pid in service.workers() if wchan(pid) == WAITING_FOR_A_CONNECTION]

    wait_for(waiting, "a prepared worker")
    return waiting()[0]


def test_a_prepared_worker_copied_what_it_shared_and_nothing_more(fresh_nsgated):
    service = fresh_nsgated("--workers", "1")
    worker = _prepared_worker(service)
    mine, parents = _private_anon_pages(worker), _private_anon_pages(service.pid)
    shared = [address for address, entry in mine.items() if not entry & EXCLUSIVE]
    assert shared == []  # every page still mapped by the service too was copied
    assert len(set(parents) & set(mine)) > 256  # and there were many (1 MiB and more)
    fresh = set(mine) - set(parents)  # allocated by the worker: the service has no page there
    assert len(fresh) <= 64, f"{len(fresh)} pages the service never touched were allocated"


def test_a_request_handed_to_a_worker_still_preparing_is_served_at_once(fresh_nsgated,
                                                                         tmp_path):
    """Each madvise of the preparation is made to take 5 s (strace's fault injection, on the
    service and the workers it forks from then on; a whole preparation makes dozens). While the
    worker sits in one, the service hands it a request and puts it back to the service's own
    policy (it prepares at SCHED_IDLE, where a busy machine would leave the request waiting);
    the trace then shows the worker looking between two steps, finding the request, and serving
    it at once."""
    service = fresh_nsgated("--workers", "1")
    _prepared_worker(service)  # before strace: its preparation is not traced
    log = tmp_path / "strace.log"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", str(log), "-p", str(service.pid),
                               "-e", "trace=madvise,select,pselect6,recvmsg,sendmsg,"
                               "sched_setscheduler",
                               "-e", "inject=madvise:delay_enter=5000000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    try:
        wait_for(lambda: _tracer(service.pid) == tracer.pid, "strace to attach")
        assert ask(ALICE, "getsubids", ["nsgt-alice"])["status"] == 0  # served by that worker
        wait_for(lambda: _preparing(log.read_text()), "a new worker preparing")
        second = _preparing(log.read_text())[0]
        assert os.sched_getscheduler(second) == os.SCHED_IDLE
        client = subprocess.Popen(as_user(ALICE, ["/usr/bin/python3", "-I", "-c", CLIENT,
                                                  str(LIBDIR), json.dumps(_GETSUBIDS)]),
                                  stdout=subprocess.PIPE)
        wait_for(lambda: _handed_to(log.read_text(), service.pid) or client.poll() is not None,
                 "the hand-over")
        assert client.poll() is None, log.read_text()[-3000:]
        # still inside the slowed madvise, and already at the service's policy:
        assert f"{second} <... madvise resumed>" not in log.read_text()
        assert os.sched_getscheduler(second) == os.SCHED_OTHER
        out, _ = client.communicate(timeout=PATIENCE)
        assert json.loads(out) == {"status": 0, "out": "0: nsgt-alice 200000 65536\n",
                                   "err": ""}
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        tracer.terminate()
        tracer.wait(timeout=PATIENCE)
    calls = [line.split(None, 1)[1] for line in log.read_text().splitlines()
             if line.startswith(f"{second} ")]
    found = next(index for index, call in enumerate(calls)  # it looked, found the request,
                 if call.startswith(("select(", "pselect6(")) and ") = 1 " in call)
    assert [call for call in calls[:found] if call.startswith("madvise(")]  # while preparing,
    assert not [call for call in calls[found:] if call.startswith("madvise(")]  # stopped,
    then = [call for call in calls[found + 1:] if not call.startswith("sched_setscheduler(")]
    assert then[0].startswith("recvmsg(")  # and took it
    parents = [line.split(None, 1)[1] for line in log.read_text().splitlines()
               if line.startswith(f"{service.pid} ") and " --- " not in f" {line} "]
    hurried = next(index for index, call in enumerate(parents)
                   if call.startswith(f"sched_setscheduler({second}, SCHED_OTHER"))
    assert parents[hurried - 1].startswith("sendmsg(")  # right after the hand-over


_GETSUBIDS = {"helper": "getsubids", "args": ["nsgt-alice"]}


def _preparing(log: str) -> list[int]:
    """The processes that made a madvise (the traced service's new workers, preparing)."""
    return sorted({int(line.split()[0]) for line in log.splitlines()
                   if line.split(None, 1)[1].startswith("madvise(")})


def _handed_to(log: str, parent: int) -> bool:
    """The parent has handed a connection over and set the worker's policy: the call has
    returned (strace may show it in two lines, unfinished and resumed)."""
    return any(line.startswith(f"{parent} ") and "sched_setscheduler" in line and " = " in line
               for line in log.splitlines())

"""nsgated's idle workers preparing for a request (system/memory.py), read from the kernel: a
prepared worker has its own copy of every page it shared with the service and no page the
service never touched; a request handed to a worker still preparing stops the preparation and is
served at once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.service_support import Nsgated, ask
from tests.support import ALICE, PATIENCE, wait_for, wchan

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
    """Each madvise of the preparation is made to take 2 s (strace's fault injection, on the
    service and the workers it forks from then on; a whole preparation makes dozens): the trace
    shows the worker looking for a request between two, finding it, and serving it at once."""
    service = fresh_nsgated("--workers", "1")
    first = _prepared_worker(service)
    log = tmp_path / "strace.log"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", str(log), "-p", str(service.pid),
                               "-e", "trace=madvise,select,pselect6,recvmsg",
                               "-e", "inject=madvise:delay_enter=2000000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _tracer(service.pid) == tracer.pid, "strace to attach")
        assert ask(ALICE, "getsubids", ["nsgt-alice"])["status"] == 0  # served by `first`
        wait_for(lambda: [pid for pid in service.workers() if pid != first], "a new worker")
        second = next(pid for pid in service.workers() if pid != first)
        wait_for(lambda: f"{second} madvise(" in log.read_text(), "its preparation to start")
        answer = ask(ALICE, "getsubids", ["nsgt-alice"])
        assert answer == {"status": 0, "out": "0: nsgt-alice 200000 65536\n", "err": ""}
    finally:
        tracer.terminate()
        tracer.wait(timeout=PATIENCE)
    calls = [line.split(None, 1)[1] for line in log.read_text().splitlines()
             if line.startswith(f"{second} ")]
    found = next(index for index, call in enumerate(calls)  # it looked, found the request,
                 if call.startswith(("select(", "pselect6(")) and ") = 1 " in call)
    assert [call for call in calls[:found] if call.startswith("madvise(")]  # while preparing,
    assert not [call for call in calls[found:] if call.startswith("madvise(")]  # stopped,
    assert calls[found + 1].startswith("recvmsg(")  # and took it

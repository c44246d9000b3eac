"""`featvis._util.heap.keep_freed_memory`, measured by the kernel: page faults (getrusage) while tensors
of render-activation size are allocated and freed again and again, inside and outside the block,
and the resident memory given back on leaving it (/proc/self/statm). In a fresh process each, as
the allocator settings are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from featvis._util.heap import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="keep_freed_memory acts on glibc's malloc only (Linux)")

PROBE = """
import json, os, resource, torch
from featvis._util.heap import keep_freed_memory

def faults(rounds=10):
    # page faults of activations of 40 MiB (a batch-16 conv1 output is 51 MB) built and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        torch.empty(10 << 20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

faults()  # warm up torch's own first-use allocations
report = {"outside": faults()}
with keep_freed_memory() as active:
    report["active"] = active
    faults()  # the heap grows once
    report["inside"] = faults()
    with keep_freed_memory():
        pass
    report["after_inner_exit"] = faults()  # still inside the outer block
    before = resident_mib()
    chunks = [torch.empty(10 << 20).fill_(1.0) for _ in range(8)]  # 320 MiB
    report["grown"] = resident_mib() - before
    del chunks
    report["kept"] = resident_mib() - before
report["returned"] = resident_mib() - before
print(json.dumps(report))
"""


def test_freed_memory_is_reused_inside_and_given_back_after():
    report = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                                       timeout=300).stdout)
    pages = 10 * (40 << 20) // 4096  # what faulting every activation in costs
    assert report["active"] is True
    assert report["outside"] > pages / 2, report  # glibc's default: blocks over 32 MiB are mmapped, freed to the kernel
    assert report["inside"] < report["outside"] / 10, report
    assert report["after_inner_exit"] < report["outside"] / 10, report  # a nested block's exit does not end it
    assert report["grown"] > 200 and report["kept"] > 200, report  # kept in the process while inside
    assert report["returned"] < 50, report  # ... and returned when the outermost block ends

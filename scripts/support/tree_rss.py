"""Runs a command; records the peak memory of its whole process tree and its own CPU time.

Usage: python tree_rss.py OUT_FILE -- COMMAND...
Writes "PEAK_KIB USER_S SYS_S" to OUT_FILE and exits with the command's status.

GNU time's "maximum resident set size" is that of the largest single process; a tool that
forks workers (kserve-storage runs 4 processes) needs the tree's total, which is what a
container's memory limit meets (page cache aside). Each process counts its proportional set
size (Pss, /proc/PID/smaps_rollup): pages the forked workers share copy-on-write are counted
once in the total, not once per process. Sampled every 100 ms: often enough for the plateau a
loader's memory reaches, rarely enough that the sampler's own work (it reads /proc) stays small
beside the tool's. The CPU time is the command's (and its descendants') from wait4, so the
sampler's own CPU is not counted; GNU time around this script would count both.
"""
import os
import subprocess
import sys
import time

out, cmd = sys.argv[1], sys.argv[3:]
assert sys.argv[2] == "--", __doc__


def children():
    kids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    return kids


def pss_kb(pid):
    """Pss in KiB (VmRSS where smaps_rollup is missing, kernels before 4.14)."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


proc = subprocess.Popen(cmd)
peak = 0
while True:
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == proc.pid:
        break
    kids, todo, total = children(), [proc.pid], 0
    while todo:
        p = todo.pop()
        total += pss_kb(p)
        todo.extend(kids.get(p, []))
    peak = max(peak, total)
    time.sleep(0.1)
with open(out, "w") as f:
    f.write(f"{peak} {usage.ru_utime:.2f} {usage.ru_stime:.2f}\n")
sys.exit(os.waitstatus_to_exitcode(status))

#!/usr/bin/env python3
"""Memory of a process tree, for the idle-session figures of compare.sh.

usage: procmem.py PID [COMM...]

Sums over PID and all its descendants, and counts those whose /proc/N/comm
is COMM: prints "procs=N rss_kb=R pss_kb=P COMM=N ...". RSS counts shared
pages (libraries, Dovecot's shared mappings) once per process; PSS divides
each shared page among the processes that map it, so PSS adds up to what the
tree really costs.
"""

import os
import sys


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    root = int(sys.argv[1])
    comms = {c: 0 for c in sys.argv[2:]}
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    procs = rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open("/proc/%d/comm" % pid) as f:
                comm = f.read().strip()
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            procs += 1
            if comm in comms:
                comms[comm] += 1
        except OSError:
            continue
    print("procs=%d rss_kb=%d pss_kb=%d" % (procs, rss, pss) + "".join(" %s=%d" % kv for kv in comms.items()))


main()

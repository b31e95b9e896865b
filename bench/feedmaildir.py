#!/usr/bin/env python3
"""Deliver new mail into Maildirs while a benchmark polls them.

usage: feedmaildir.py [--rate R [--secs S] | --each N] [--min B] [--max B] [--seed N] DIR...

--rate R: R messages a second in all, to the DIRs in turn (evenly spaced in
time), for --secs S seconds, or until SIGTERM or SIGINT when S is 0 (the
default). --each N: N messages to every DIR at once.
Messages are generated as genmaildir.py makes them (sizes uniform in
--min..--max octets as POP3 counts them, CRLF), written to DIR/tmp and
renamed into DIR/new as a delivery agent does (Maildir: tmp, then new),
with Dovecot's S= and W= sizes in the name. Files get the owner of
DIR/new. Prints how many messages and octets it delivered.
"""

import argparse
import os
import random
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from genmaildir import message  # noqa: E402


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--secs", type=float, default=0)
    ap.add_argument("--each", type=int, default=0)
    ap.add_argument("--min", type=int, default=2048)
    ap.add_argument("--max", type=int, default=204800)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    if (a.each > 0) == (a.rate > 0):
        raise SystemExit("feedmaildir.py: give --rate or --each")
    rng = random.Random(a.seed)
    host = socket.gethostname().replace("/", "_").replace(":", "_")
    owners = {}
    for d in a.dirs:
        st = os.stat(os.path.join(d, "new"))
        owners[d] = (st.st_uid, st.st_gid)
    count = total = 0

    def deliver(d):
        nonlocal count, total
        count += 1
        size = rng.randint(a.min, a.max)
        text = message(rng, 900000 + count, size).encode()
        base = "%d.M%dP%d.%s" % (int(time.time()), count, os.getpid(), host)
        tmp = os.path.join(d, "tmp", base)
        with open(tmp, "wb") as f:
            f.write(text)
        if os.geteuid() == 0:
            os.chown(tmp, *owners[d])
        os.rename(tmp, os.path.join(d, "new", "%s,S=%d,W=%d" % (base, len(text), size)))
        total += size

    if a.each > 0:
        for _ in range(a.each):
            for d in a.dirs:
                deliver(d)
    else:
        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        print("feeding %g messages a second into %d maildrops" % (a.rate, len(a.dirs)), flush=True)
        start = time.monotonic()
        n = int(a.rate * a.secs) if a.secs > 0 else -1
        i = 0
        try:
            while i != n:
                wait = start + i / a.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                deliver(a.dirs[i % len(a.dirs)])
                i += 1
        except KeyboardInterrupt:
            pass
    print("feedmaildir: %d messages, %d octets (CRLF) into %d maildrops" % (count, total, len(a.dirs)))


main()

"""One POP3 session with Python's poplib, driven by popgate's e2e tests.

usage: poplib_session.py HOST PORT USER [DELE,NUMBERS]
The password comes on the first line of stdin (never on the command line).

Prints one JSON object with STAT, LIST, UIDL, every RETR (base64 of the
message rebuilt with CRLF line endings, and poplib's octet count) and TOP 1 2.
Then waits for a line on stdin (the test changes the mailbox meanwhile),
sends DELE for the given numbers and QUIT, and prints {"quit": ...}.
"""

import base64
import json
import poplib
import sys


def rebuild(lines):
    return base64.b64encode(b"".join(line + b"\r\n" for line in lines)).decode()


def main():
    host, port, user = sys.argv[1:4]
    dele = [int(n) for n in sys.argv[4].split(",")] if len(sys.argv) > 4 and sys.argv[4] else []
    password = sys.stdin.readline().rstrip("\n")

    p = poplib.POP3(host, int(port), timeout=30)
    p.user(user)
    p.pass_(password)
    count, size = p.stat()
    out = {"stat": [count, size]}
    out["list"] = [line.decode() for line in p.list()[1]]
    out["uidl"] = [line.decode() for line in p.uidl()[1]]
    out["retr"] = []
    for n in range(1, count + 1):
        _, lines, octets = p.retr(n)
        out["retr"].append({"octets": octets, "raw": rebuild(lines)})
    if count:
        out["top"] = rebuild(p.top(1, 2)[1])
    print(json.dumps(out), flush=True)

    sys.stdin.readline()
    for n in dele:
        p.dele(n)
    try:
        resp = p.quit().decode()
    except poplib.error_proto as e:
        resp = "error: " + str(e)
    print(json.dumps({"quit": resp}), flush=True)


main()

"""One POP3 session with Python's poplib, driven by popgate's e2e tests.

usage: poplib_session.py HOST PORT USER [DELE,NUMBERS] [abort]
The password comes on the first line of stdin (never on the command line).
With "abort", the connection is closed after the DELEs without QUIT.

Prints one JSON object with STAT, LIST, UIDL, every RETR (base64 of the
message rebuilt with CRLF line endings, and poplib's octet count) and TOP 1 2.
Then waits for a line on stdin (the test changes the mailbox meanwhile),
sends DELE for the given numbers and QUIT, and prints {"quit": ...}.
"""

import base64
import json
import poplib
import sys
import time


def rebuild(lines):
    return base64.b64encode(b"".join(line + b"\r\n" for line in lines)).decode()


def main():
    host, port, user = sys.argv[1:4]
    dele = [int(n) for n in sys.argv[4].split(",")] if len(sys.argv) > 4 and sys.argv[4] else []
    abort = len(sys.argv) > 5 and sys.argv[5] == "abort"
    password = sys.stdin.readline().rstrip("\n")

    # A maildrop still locked by a session the server is ending answers
    # -ERR [IN-USE] (RFC 2449 §8.1.1): try again for a while, as clients do.
    deadline = time.monotonic() + 30
    while True:
        p = poplib.POP3(host, int(port), timeout=30)
        try:
            p.user(user)
            p.pass_(password)
            break
        except poplib.error_proto as e:
            p.close()
            if b"[IN-USE]" not in e.args[0] or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
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
    if abort:
        p.sock.close()
        print(json.dumps({"quit": "aborted"}), flush=True)
        return
    try:
        resp = p.quit().decode()
    except poplib.error_proto as e:
        resp = "error: " + str(e)
    print(json.dumps({"quit": resp}), flush=True)


main()

#!/usr/bin/env python3
"""Write a Maildir of generated messages for popgate's comparison benchmark.

usage: genmaildir.py DIR COUNT MIN_BYTES MAX_BYTES [SEED]

Creates DIR/{cur,new,tmp} and COUNT messages in DIR/cur with sizes drawn
uniformly from MIN_BYTES..MAX_BYTES (the size as POP3 reports it, CRLF line
endings). Files use LF line endings, as Maildir stores them, and carry
Dovecot's S= (file size) and W= (CRLF size) in their names, as Dovecot's own
delivery writes them. The output is the same for the same SEED.
"""

import base64
import os
import random
import sys


def message(rng, n, size):
    """Return the LF text of message n whose CRLF size is exactly size."""
    head = (
        "Return-Path: <sender{0}@example.com>\n"
        "From: Sender {0} <sender{0}@example.com>\n"
        "To: Bench User <bench@example.org>\n"
        "Subject: benchmark message {0} ({1} octets)\n"
        "Date: Mon, 02 Mar 2026 09:{2:02d}:{3:02d} +0000\n"
        "Message-ID: <bench.{0}@example.com>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: application/octet-stream\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
    ).format(n, size, (n // 60) % 60, n % 60)
    lines = head.count("\n")
    text = head
    # Body: base64 lines of 76 characters, like an attachment, then one or
    # two shorter lines that make the CRLF size exact.
    crlf = len(text) + lines
    chunk = []
    while size - crlf > 160:
        chunk.append(base64.b64encode(rng.randbytes(57)).decode())
        crlf += 78
    rest = size - crlf
    if rest < 2:
        raise SystemExit("size %d too small for the headers" % size)
    if rest > 80:
        chunk.append("A" * (rest // 2 - 2))
        rest -= rest // 2
    chunk.append("A" * (rest - 2))
    return text + "\n".join(chunk) + "\n"


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    out, count, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    rng = random.Random(seed)
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    total = 0
    for n in range(1, count + 1):
        size = rng.randint(lo, hi)
        text = message(rng, n, size).encode()
        assert len(text) + text.count(b"\n") == size
        name = "%d.M%dP1.bench,S=%d,W=%d:2," % (1772442000 + n, n, len(text), size)
        with open(os.path.join(out, "cur", name), "wb") as f:
            f.write(text)
        total += size
    print("%s: %d messages, %d octets (CRLF)" % (out, count, total))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""bench/write_ops.py - what cp, mv and rm cost per file far from the server.

    python3 bench/write_ops.py [--files 100] [--delay-ms 10] [--rounds 2]
                               [--imapfuse-bin build/imapfuse]

Starts a private Dovecot (tests/integration/imapserver.py, loopback only)
and a mount through bench/latency_proxy.c (DELAY each way), then times, on
FILES small messages: `cp` of them into a folder, `mv` of them to another
folder, and `rm` of them there, each checked from a second IMAP connection.
Prints seconds and milliseconds per file, and per file in round trips (a
write can take no fewer than one: the call returns once the server said
so).  Needs root (FUSE, Dovecot).
"""

import argparse
import imaplib
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from farlab import add_far_options, far_server, mounted  # noqa: E402


def count(c, box):
    typ, data = c.select('"%s"' % box, readonly=True)
    assert typ == "OK", data
    return int(data[0])


def timed(argv, cwd=None):
    t0 = time.monotonic()
    subprocess.run(argv, check=True, cwd=cwd)
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100)
    add_far_options(ap)
    a = ap.parse_args()
    with far_server("imapfuse-wops-", a.delay_ms) as (work, env, port):
        mnt, src = os.path.join(work, "mnt"), os.path.join(work, "src")
        os.makedirs(mnt)
        os.makedirs(src)
        for i in range(a.files):
            with open(os.path.join(src, "m%04d.eml" % i), "wb") as f:
                f.write(("From: a@example.org\r\nTo: b@example.org\r\nSubject: %d\r\n"
                         "Message-ID: <wops-%d@example.org>\r\n\r\nbody %d\r\n"
                         % (i, i, i)).encode() + b"x" * 2000 + b"\r\n")
        c = imaplib.IMAP4(env["HOST"], int(env["PORT"]))
        c.login(env["USER"], open(env["PWFILE"]).read().strip())
        rtt = 2 * a.delay_ms / 1000.0
        res = {"cp": [], "mv": [], "rm": []}
        for r in range(a.rounds):
            for box in ("A%d" % r, "B%d" % r):
                assert c.create(box)[0] == "OK"
            with mounted(a.imapfuse_bin, env, port, mnt, os.path.join(work, "cache%d" % r)):
                A, B = os.path.join(mnt, "A%d" % r), os.path.join(mnt, "B%d" % r)
                os.listdir(A)
                os.listdir(B)
                names = sorted(os.listdir(src))
                res["cp"].append(timed(["cp"] + [os.path.join(src, n) for n in names] + [A]))
                assert count(c, "A%d" % r) == a.files
                res["mv"].append(timed(["sh", "-c", 'mv "$1"/* "$2"/', "sh", A, B]))
                assert count(c, "A%d" % r) == 0 and count(c, "B%d" % r) == a.files
                res["rm"].append(timed(["sh", "-c", 'rm "$1"/*', "sh", B]))
                assert count(c, "B%d" % r) == 0
            print("round %d: cp %.2f s, mv %.2f s, rm %.2f s" % (
                r + 1, res["cp"][-1], res["mv"][-1], res["rm"][-1]))
        print("%d files, %.0f ms round trip; medians of %d rounds:" % (a.files, rtt * 1000,
                                                                      a.rounds))
        for k in ("cp", "mv", "rm"):
            s = statistics.median(res[k])
            print("  %-3s %7.2f s  %6.1f ms/file  %4.1f round trips/file" % (
                k, s, 1000 * s / a.files, s / a.files / rtt))

if __name__ == "__main__":
    main()

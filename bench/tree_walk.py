#!/usr/bin/env python3
"""bench/tree_walk.py - a cold `ls -R` of an account with many folders.

    python3 bench/tree_walk.py [--folders 2000] [--delay-ms 10] [--rounds 2]
                               [--imapfuse-bin build/imapfuse]

Starts a private Dovecot (tests/integration/imapserver.py, loopback only),
makes FOLDERS folders (half top-level, half 50 to a parent) with 0-5 small
messages each, and times a cold `ls -R` (fresh mount, empty cache dir)
through bench/latency_proxy.c (DELAY each way), alternating two mounts:
  one   -o connections=1: folders listed one after the other, as the walk
        opens them (no listing ahead: it runs on the other connections)
  ahead the defaults (4 connections: the next folders of the walk are
        listed on 3 of them while ls works on the one it opened)
Prints each run, the medians and their ratio.  Needs root (FUSE, Dovecot).
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from farlab import add_far_options, far_server, mounted  # noqa: E402


def populate(env, n, seed=42):
    import imaplib
    c = imaplib.IMAP4(env["HOST"], int(env["PORT"]))
    c.login(env["USER"], open(env["PWFILE"]).read().strip())
    half = n // 2
    names = ["T%04d" % i for i in range(half)] + \
            ["N%02d/S%03d" % (i // 50, i % 50) for i in range(n - half)]
    rnd = random.Random(seed)
    msgs = 0
    for name in names:
        typ, data = c.create(name)
        assert typ == "OK", (name, data)
        for k in range(rnd.randint(0, 5)):
            body = ("From: a@example.org\r\nTo: b@example.org\r\nSubject: %d in %s\r\n"
                    "Message-ID: <%s-%d@example.org>\r\n\r\nbody %d\r\n"
                    % (k, name, name.replace("/", "-"), k, k)).encode()
            typ, data = c.append(name, None, None, body)
            assert typ == "OK", (name, data)
            msgs += 1
    c.logout()
    return msgs


def walk(binary, env, port, mnt, cache, opts):
    with mounted(binary, env, port, mnt, cache, opts):
        t0 = time.monotonic()
        out = subprocess.run(["ls", "-R", mnt], stdout=subprocess.PIPE, check=True).stdout
        took = time.monotonic() - t0
    dirs = sum(1 for line in out.splitlines() if line.endswith(b":"))
    return took, dirs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folders", type=int, default=2000)
    add_far_options(ap)
    a = ap.parse_args()
    def fill(env):
        t0 = time.monotonic()
        msgs = populate(env, a.folders)
        print("%d folders, %d messages made in %.1f s" % (a.folders, msgs, time.monotonic() - t0))

    with far_server("imapfuse-tree-", a.delay_ms, fill) as (work, env, port):
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt)
        times = {"one": [], "ahead": []}
        for r in range(a.rounds):
            for name, opts in (("one", "connections=1"), ("ahead", "")):
                cache = os.path.join(work, "cache-%s-%d" % (name, r))
                took, dirs = walk(a.imapfuse_bin, env, port, mnt, cache, opts)
                times[name].append(took)
                print("round %d %-5s cold ls -R %7.2f s (%d directories)" % (r + 1, name, took,
                                                                           dirs))
        one, ahead = statistics.median(times["one"]), statistics.median(times["ahead"])
        print("median: one folder at a time %.2f s, listing ahead %.2f s, ratio %.2f "
              "(%.0f ms round trip)" % (one, ahead, ahead / one, 2 * a.delay_ms))

if __name__ == "__main__":
    main()

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from tree_walk import env_of  # noqa: E402


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
    ap.add_argument("--delay-ms", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--imapfuse-bin", default=os.path.join(ROOT, "build", "imapfuse"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="imapfuse-wops-")
    state, mnt, src = (os.path.join(work, d) for d in ("dv", "mnt", "src"))
    os.makedirs(mnt)
    os.makedirs(src)
    for i in range(a.files):
        with open(os.path.join(src, "m%04d.eml" % i), "wb") as f:
            f.write(("From: a@example.org\r\nTo: b@example.org\r\nSubject: %d\r\n"
                     "Message-ID: <wops-%d@example.org>\r\n\r\nbody %d\r\n" % (i, i, i)).encode()
                    + b"x" * 2000 + b"\r\n")
    proxy_bin = os.path.join(work, "latency_proxy")
    subprocess.run(["cc", "-O2", "-pthread", os.path.join(HERE, "latency_proxy.c"), "-o",
                    proxy_bin], check=True)
    dv = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "integration",
                                                        "imapserver.py"),
                           "--messages", "0", "--state-dir", state],
                          stdout=subprocess.DEVNULL)
    proxy = p = None
    try:
        env = env_of(state)
        c = imaplib.IMAP4(env["HOST"], int(env["PORT"]))
        c.login(env["USER"], open(env["PWFILE"]).read().strip())
        proxy = subprocess.Popen([proxy_bin, "--target-port", env["PORT"], "--delay-ms",
                                  str(a.delay_ms)], stdout=subprocess.PIPE, text=True)
        port = int(proxy.stdout.readline().split()[2])
        rtt = 2 * a.delay_ms / 1000.0
        res = {"cp": [], "mv": [], "rm": []}
        for r in range(a.rounds):
            for box in ("A%d" % r, "B%d" % r):
                assert c.create(box)[0] == "OK"
            o = "password_file=%s,tls=off,cache_dir=%s" % (env["PWFILE"],
                                                          os.path.join(work, "cache%d" % r))
            p = subprocess.Popen([a.imapfuse_bin, "-f", "-o", o,
                                  "imap://%s@127.0.0.1:%d" % (env["USER"], port), mnt],
                                 stderr=subprocess.PIPE, text=True)
            for _ in range(300):
                if subprocess.run(["mountpoint", "-q", mnt]).returncode == 0:
                    break
                if p.poll() is not None:
                    sys.exit("imapfuse exited: %s" % p.stderr.read())
                time.sleep(0.1)
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
            subprocess.run(["fusermount3", "-u", mnt], check=True)
            p.wait(60)
            p = None
            print("round %d: cp %.2f s, mv %.2f s, rm %.2f s" % (
                r + 1, res["cp"][-1], res["mv"][-1], res["rm"][-1]))
        print("%d files, %.0f ms round trip; medians of %d rounds:" % (a.files, rtt * 1000,
                                                                      a.rounds))
        for k in ("cp", "mv", "rm"):
            s = statistics.median(res[k])
            print("  %-3s %7.2f s  %6.1f ms/file  %4.1f round trips/file" % (
                k, s, 1000 * s / a.files, s / a.files / rtt))
    finally:
        if p is not None:
            subprocess.run(["fusermount3", "-u", mnt])
            p.wait(60)
        if proxy is not None:
            proxy.terminate()
        dv.terminate()
        dv.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Memory imapfuse spends on message metadata, per message.

    /usr/bin/python3 bench/metamem.py [--messages 100000] [--build build]

Starts a private Dovecot on 127.0.0.1, writes N small messages into one
mailbox (maildir files, so loading takes seconds), mounts it with
cache=none (nothing read from disk), and reads imapfuse's resident memory
(VmRSS from /proc) before and after `ls -l` of that mailbox.  The
difference divided by N is the cost of one message's metadata in the
listing (uid, size, date, flags).  A second `ls -l` shows the steady state
(the first listing's temporary buffers freed or reused).  Prints one table.
"""

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import corpus  # noqa: E402
from dovecot import Dovecot  # noqa: E402


def rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s" % field)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    a = ap.parse_args()
    binary = os.path.abspath(os.path.join(a.build, "imapfuse"))
    if not os.path.exists(binary):
        sys.exit("build imapfuse first: meson setup build && ninja -C build")

    dv = Dovecot()
    try:
        c = dv.imap()
        c.create("Big")
        c.logout()
        base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
        flagsets = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "\\Seen")]
        msgs = []
        for i in range(a.messages):
            data = ("From: a@example.org\r\nSubject: m%d\r\nMessage-ID: <%d@x>\r\n\r\n"
                    "body %d\r\n" % (i, i, i)).encode()
            msgs.append(corpus.MessageSpec(data, base + datetime.timedelta(minutes=i),
                                           flagsets[i % len(flagsets)]))
        t0 = time.monotonic()
        corpus.write_maildir(dv, "Big", msgs)
        c = dv.imap()
        typ, data = c.select("Big", readonly=True)  # Dovecot indexes the files
        c.logout()
        load = time.monotonic() - t0
        assert int(data[0]) == a.messages, data

        mnt = tempfile.mkdtemp(prefix="imapfuse-metamem-")
        pw = dv.write_password_file()
        env = dict(os.environ, XDG_CACHE_HOME=tempfile.mkdtemp(prefix="imapfuse-metamem-cache-"))
        proc = subprocess.Popen([binary, "-f", "-o", "password_file=%s,tls=off,cache=none,poll=0" % pw,
                                 "imap://%s@127.0.0.1:%d" % (dv.user, dv.port), mnt], env=env)
        for _ in range(200):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        os.listdir(mnt)
        before = rss_kib(proc.pid)
        t0 = time.monotonic()
        n = len(subprocess.run(["ls", "-l", os.path.join(mnt, "Big")], capture_output=True,
                               check=True).stdout.splitlines()) - 1
        first = time.monotonic() - t0
        after1 = rss_kib(proc.pid)
        t0 = time.monotonic()
        subprocess.run(["ls", "-l", os.path.join(mnt, "Big")], capture_output=True, check=True)
        second = time.monotonic() - t0
        after2 = rss_kib(proc.pid)
        peak = rss_kib(proc.pid, "VmHWM")
        subprocess.run(["fusermount3", "-u", mnt], check=True)
        proc.wait(30)
        os.rmdir(mnt)
        assert n == a.messages, (n, a.messages)
        per1 = (after1 - before) * 1024 / a.messages
        per2 = (after2 - before) * 1024 / a.messages
        print("| messages | load s | 1st ls -l s | 2nd ls -l s | RSS before KiB | after 1st | after 2nd | peak | bytes/msg (1st) | bytes/msg (2nd) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("| %d | %.1f | %.2f | %.2f | %d | %d | %d | %d | %.0f | %.0f |" % (
            a.messages, load, first, second, before, after1, after2, peak, per1, per2))
        print("target: <= 128 bytes/message -> %s" % ("PASS" if per2 <= 128 else "FAIL"))
    finally:
        dv.close()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Dovecot alone: which command of another session, sent while a folder is
renamed, leaves the folder's dovecot-uidlist.lock behind (Dovecot logs "Our
dotlock file ... was deleted", and SELECTs of the renamed folder wait for
the stale lock).  Not part of the suite; it explains pool_fence (pool.c):

    python3 tests/dovecot_rename_race.py [--tries 100] [noop status ...]

Each try: session A appends a message to the folder (and waits for OK), so
that the next sync of the folder needs the lock; then, at once, session B
renames the folder and session S sends the command under test; then
session C selects the new name.  Printed per command: tries in which the
RENAME or the SELECT took over a second, the longest, and dotlock warnings
in Dovecot's log.  Commands: noop (S has the folder selected), select (S has it
selected and switches to INBOX), logout (S has it selected), status (S
asks STATUS of it), selold (S selects the old name), none (nothing).
Loopback only; Dovecot is started by tests/integration/dovecot.py.
"""
import argparse
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))
from dovecot import Dovecot  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--tries", type=int, default=100)
ap.add_argument("commands", nargs="*",
                default=["noop", "status", "select", "logout", "selold", "none"])
args = ap.parse_args()
MSG = b"From: a@b\r\nSubject: x\r\n\r\n" + b"y" * 2000 + b"\r\n"


def run(cmd):
    dv = Dovecot()
    try:
        a, b, c = (dv.imap(timeout=200) for _ in range(3))
        s = dv.imap(timeout=200)
        slow, longest = 0, 0.0
        b.create("D0")
        for i in range(args.tries):
            old, new = "D%d" % i, "D%d" % (i + 1)
            if cmd in ("noop", "select", "logout"):
                s.select(old)
            a.append(old, None, None, MSG)

            def other():
                time.sleep(random.uniform(0, 0.004))
                try:
                    if cmd == "noop":
                        s.noop()
                    elif cmd == "select":
                        s.select("INBOX")
                    elif cmd == "logout":
                        s.logout()
                    elif cmd == "status":
                        s.status(old, "(MESSAGES UIDVALIDITY HIGHESTMODSEQ)")
                    elif cmd == "selold":
                        s.select(old)
                except Exception:
                    pass  # Dovecot drops a session whose mailbox was renamed
            t = threading.Thread(target=other)
            t.start()
            t0 = time.monotonic()
            b.rename(old, new)
            tr = time.monotonic() - t0
            t.join()
            t0 = time.monotonic()
            c.select(new)
            ts = time.monotonic() - t0
            try:
                s.noop()
            except Exception:
                s = dv.imap(timeout=200)
            slow += tr > 1 or ts > 1
            longest = max(longest, tr, ts)
        with open(dv.log_path) as f:
            dotlocks = f.read().count("dotlock")
        print("%-7s %d tries: %d slow (longest wait %.1f s), %d dotlock warnings"
              % (cmd, args.tries, slow, longest, dotlocks), flush=True)
    finally:
        dv.close()


for cmd in args.commands:
    run(cmd)

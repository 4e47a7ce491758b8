#!/usr/bin/env python3
"""bench/cp_uid_names.py - cp of files named <UID>.eml into a big folder.

    python3 bench/cp_uid_names.py --a OLD_BINARY [--b NEW_BINARY]
        [--files 200] [--rounds 2] [--messages 10000] [--seed 2]

What cp -r within the mount, rsync back and restores write: files named
like UIDs.  Starts a private Dovecot with the benchmark corpus
(tests/integration/imapserver.py, loopback only; its INBOX holds about
3,000 messages), and for each round and binary in turn: expunges FILES
messages of INBOX from a second IMAP connection, mounts on a fresh cache
directory, lists INBOX once, and times one `cp` of FILES files named by
the expunged UIDs into it, then checks that the server has them all.
Prints seconds and milliseconds per file.  Needs root (FUSE, Dovecot).
"""

import argparse
import imaplib
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from farlab import far_server, mounted  # noqa: E402


def inbox_uids(c):
    c.select("INBOX")
    typ, data = c.uid("SEARCH", "ALL")
    return [int(x) for x in data[0].split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="imapfuse binary A")
    ap.add_argument("--b", help="imapfuse binary B (optional)")
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()
    bins = [os.path.abspath(args.a)] + ([os.path.abspath(args.b)] if args.b else [])
    with far_server("imapfuse-cpnames-", 0, messages=args.messages,
                    seed=args.seed) as (work, env, port):
        port = int(env["PORT"])
        c = imaplib.IMAP4("127.0.0.1", port)
        c.login(env["USER"], open(env["PWFILE"]).read().strip())
        src = os.path.join(work, "src")
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt, exist_ok=True)
        step = 0
        for rnd in range(args.rounds):
            for b in bins:
                uids = inbox_uids(c)
                if len(uids) < 100 + args.files:
                    sys.exit("INBOX has too few messages left for another round")
                gone = uids[100:100 + args.files]
                c.uid("STORE", ",".join(map(str, gone)), "+FLAGS.SILENT", r"(\Deleted)")
                c.expunge()
                shutil.rmtree(src, ignore_errors=True)
                os.makedirs(src)
                for u in gone:
                    with open(os.path.join(src, "%d.eml" % u), "wb") as f:
                        f.write(b"From: a@b\r\nSubject: step %d uid %d\r\n"
                                b"Message-ID: <s%d.u%d@cp-uid-names>\r\n\r\nbody\r\n"
                                % (step, u, step, u))
                cache = os.path.join(work, "cache%d" % step)
                step += 1
                with mounted(b, env, port, mnt, cache):
                    os.listdir(os.path.join(mnt, "INBOX"))
                    names = [os.path.join(src, "%d.eml" % u) for u in gone]
                    t0 = time.monotonic()
                    subprocess.run(["cp"] + names + [os.path.join(mnt, "INBOX")], check=True)
                    t = time.monotonic() - t0
                got = len(inbox_uids(c)) - (len(uids) - len(gone))
                if got != len(gone):
                    sys.exit("%s: %d of %d files on the server" % (b, got, len(gone)))
                print("round %d  %s  cp of %d <UID>.eml names into INBOX (%d messages): "
                      "%.2f s (%.1f ms/file)" % (rnd + 1, b, len(gone), len(uids) - len(gone),
                                                 t, 1000 * t / len(gone)), flush=True)


if __name__ == "__main__":
    main()

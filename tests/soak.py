#!/usr/bin/python3
"""Soak: everything at once on one mount, while a second client changes the
account underneath.  Not part of the suite (it runs for minutes and its
interleavings differ every run); run it by hand after changing the pool,
the caches or the write path:

    python3 tests/soak.py --build build-asan --seconds 150 [--opts imap_debug]

Threads on the mount: two readers (whole files and ranges), a walker
(os.walk + stat), three writers (new files into W1/W2, which nothing else
touches), rm and mv of messages between A, B and C, and mkdir / write /
rename / rmdir of folders.  A second IMAP client meanwhile appends,
expunges, flags and moves messages in A, B and C, and creates and deletes
folders.  Errors that such races make legitimate (ENOENT, EISDIR) are
counted; what it fails on (exit status 1):
  - a thread still running two minutes after the end (a hang);
  - an operation that took 30 s or more (a stall);
  - a sanitizer report, or imapfuse not exiting 0 at unmount;
  - a file read whose bytes are not a message (zeros, empty);
  - a write that succeeded but is not on the server exactly once, or one
    that failed without its bytes in the unsent directory.
The work directory (imapfuse's stderr, Dovecot's log) is kept and named.
Loopback only; Dovecot is started by tests/integration/dovecot.py.
"""
import argparse
import collections
import errno
import glob
import imaplib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "integration"))
from dovecot import Dovecot  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
ap.add_argument("--seconds", type=float, default=150)
ap.add_argument("--opts", default="", help="extra -o options, comma separated")
args = ap.parse_args()

STALL_S = 30


def msg(tag, size=2000):
    return ("From: a@example.org\r\nTo: b@example.org\r\nSubject: %s\r\n"
            "Message-ID: <%s@soak>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n%s\r\n"
            % (tag, tag, "x" * size)).encode()


dv = Dovecot()
c = dv.imap()
for box in ("A", "B", "C", "W1", "W2"):
    c.create(box)
for box in ("A", "B", "C"):
    for i in range(150):
        c.append(box, None, None, msg("%s-%d" % (box, i), random.choice([500, 3000, 20000, 200000])))
work = tempfile.mkdtemp(prefix="imapfuse-soak-")
env = dict(os.environ, XDG_DATA_HOME=work + "/data", XDG_CACHE_HOME=work + "/cache")
env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1:halt_on_error=1")
env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
env.setdefault("LSAN_OPTIONS", "suppressions=%s:print_suppressions=0" % os.path.join(HERE, "lsan.supp"))
pw = dv.write_password_file()
mnt = work + "/mnt"
os.makedirs(mnt)
err = open(work + "/imapfuse.stderr", "w")
opts = "password_file=%s,tls=off" % pw + ("," + args.opts if args.opts else "")
proc = subprocess.Popen([os.path.join(args.build, "imapfuse"), "-f", "-o", opts,
                         "imap://%s@127.0.0.1:%d" % (dv.user, dv.port), mnt], stderr=err, env=env)
t0 = time.time()
while not os.path.ismount(mnt):
    time.sleep(0.05)
    if time.time() - t0 > 30 or proc.poll() is not None:
        sys.exit("imapfuse did not mount; see %s" % work)

stop = time.time() + args.seconds
stats = collections.Counter()
slow = []  # (seconds, what)
running = {}  # thread name -> (what, since): operations under way
bad = []
written = {}  # tag -> (folder, stored)
lock = threading.Lock()


def note(k):
    with lock:
        stats[k] += 1


def timed(what, fn, *a):
    t = time.monotonic()
    me = threading.current_thread().name
    running[me] = (what, t)
    try:
        return fn(*a)
    finally:
        running.pop(me, None)
        d = time.monotonic() - t
        if d >= 5:
            with lock:
                slow.append((round(d, 1), what, time.strftime("%H:%M:%S")))


def ename(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def files(box):
    try:
        return [os.path.join(mnt, box, f) for f in timed("listdir " + box, os.listdir, os.path.join(mnt, box))]
    except OSError as e:
        note("listdir %s" % ename(e))
        return []


def reader():
    while time.time() < stop:
        box = random.choice(["A", "B", "C", "W1", "W2", ""])
        fs = files(box)
        for f in random.sample(fs, min(len(fs), 20)):
            try:
                with open(f, "rb") as h:
                    if random.random() < 0.3:
                        h.seek(random.randrange(0, max(1, os.fstat(h.fileno()).st_size)))
                        timed("read " + f, h.read, 4096)
                    else:
                        d = timed("read " + f, h.read)
                        if f.endswith(".eml") and b"Message-ID" not in d[:400]:
                            with lock:
                                bad.append((f, len(d), d[:40]))
                note("read ok")
            except OSError as e:
                note("read %s" % ename(e))


def walker():
    def walk():
        for root, ds, fs in os.walk(mnt):
            for f in fs:
                try:
                    os.stat(os.path.join(root, f))
                except OSError as e:
                    note("stat %s" % ename(e))
    while time.time() < stop:
        try:
            timed("walk", walk)
            note("walk ok")
        except OSError as e:
            note("walk %s" % ename(e))


def writer(k):
    i = 0
    while time.time() < stop:
        i += 1
        tag = "w%d-%d" % (k, i)
        box = random.choice(["W1", "W2"])

        def write():
            with open(os.path.join(mnt, box, tag + ".eml"), "wb") as h:
                h.write(msg(tag, random.choice([100, 5000, 300000])))
        try:
            timed("write " + tag, write)
            with lock:
                written[tag] = (box, True)
            note("write ok")
        except OSError as e:
            with lock:
                written[tag] = (box, False)
            note("write %s" % ename(e))


def remover():
    while time.time() < stop:
        fs = files(random.choice(["A", "B", "C"]))
        if fs:
            try:
                timed("rm", os.unlink, random.choice(fs))
                note("rm ok")
            except OSError as e:
                note("rm %s" % ename(e))
        time.sleep(0.05)


def mover():
    while time.time() < stop:
        a, b = random.sample(["A", "B", "C"], 2)
        fs = files(a)
        if fs:
            f = random.choice(fs)
            try:
                timed("mv", os.rename, f, os.path.join(mnt, b, "m-" + os.path.basename(f)))
                note("mv ok")
            except OSError as e:
                note("mv %s" % ename(e))
        time.sleep(0.05)


def dirs():
    i = 0
    while time.time() < stop:
        i += 1
        d = os.path.join(mnt, "D%d" % i)
        try:
            timed("mkdir", os.mkdir, d)
            with open(os.path.join(d, "x.eml"), "wb") as h:
                h.write(msg("d%d" % i))
            timed("rename dir", os.rename, d, d + "r")
            for f in os.listdir(d + "r"):
                os.unlink(os.path.join(d + "r", f))
            timed("rmdir", os.rmdir, d + "r")
            note("dir cycle ok")
        except OSError as e:
            note("dirs %s" % ename(e))
        time.sleep(0.1)


def other_client():
    e = dv.imap()
    i = 0
    while time.time() < stop:
        i += 1
        r = random.random()
        box = random.choice(["A", "B", "C"])
        t = time.monotonic()
        running["other_client"] = ("other client's command", t)
        try:
            if r < 0.3:
                e.append(box, None, None, msg("ext-%d" % i))
            elif r < 0.7:
                e.select(box)
                u = e.uid("SEARCH", "ALL")[1][0].split()
                if u:
                    x = random.choice(u).decode()
                    if r < 0.55:
                        e.uid("STORE", x, "+FLAGS", r"(\Deleted)")
                        e.uid("EXPUNGE", x)
                    else:
                        e.uid("STORE", x, "+FLAGS", r"(\Flagged)")
                e.close()
            elif r < 0.85:
                name = "X%d" % i
                e.create(name)
                e.append(name, None, None, msg("x-%d" % i))
                time.sleep(0.3)
                e.delete(name)
            else:
                e.select(box)
                u = e.uid("SEARCH", "ALL")[1][0].split()
                if u:
                    e.uid("MOVE", random.choice(u).decode(), random.choice(["A", "B", "C"]))
                e.close()
            note("other client ok")
        except imaplib.IMAP4.error:
            note("other client NO")
        except OSError as ex:  # Dovecot did not answer in 30 s
            note("other client %s" % type(ex).__name__)
            e = dv.imap()
        running.pop("other_client", None)
        if time.monotonic() - t >= 5:
            with lock:
                slow.append((round(time.monotonic() - t, 1), "other client, step %d" % i,
                             time.strftime("%H:%M:%S")))
        time.sleep(0.05)


threads = [threading.Thread(target=f, name=f.__name__, daemon=True)
           for f in (reader, reader, walker, remover, mover, dirs, other_client)]
threads += [threading.Thread(target=writer, args=(k,), name="writer%d" % k, daemon=True)
            for k in range(3)]
for t in threads:
    t.start()
hung = []
deadline = stop + 120
for t in threads:
    t.join(timeout=max(0, deadline - time.time()))
    if t.is_alive():
        hung.append(t.name)
findings = []
if hung:
    now = time.monotonic()
    findings.append("threads still running: %s; under way: %s" % (hung, [
        (n, w, round(now - t)) for n, (w, t) in list(running.items())]))
    for conn in glob.glob("/sys/fs/fuse/connections/*/waiting"):
        print("%s: %s" % (conn, open(conn).read().strip()), flush=True)
for k, v in sorted(stats.items()):
    print("  %-24s %d" % (k, v))
print("operations over 5 s: %d%s" % (len(slow), "".join("\n  %s" % (s,) for s in sorted(slow)[-10:])))
if slow and max(s[0] for s in slow) >= STALL_S:
    findings.append("a stall of %.0f s" % max(s[0] for s in slow))
if bad:
    findings.append("reads that were not a message: %s" % bad[:5])

rc = None
# After a hang, unmount lazily: the hung threads' requests are still open.
subprocess.run(["fusermount3", "-u"] + (["-z"] if hung else []) + [mnt])
try:
    rc = proc.wait(timeout=60)
except subprocess.TimeoutExpired:
    proc.kill()
    rc = "no exit in 60 s"
if rc != 0:
    findings.append("imapfuse at unmount: %s" % rc)
err.close()
text = open(work + "/imapfuse.stderr", errors="replace").read()
san = [l for l in text.splitlines()
       if re.search(r"ERROR: AddressSanitizer|runtime error|LeakSanitizer|CRITICAL|Segmentation", l)]
if san:
    findings.append("sanitizer or critical lines: %s" % san[:5])
warns = sorted(set(re.sub(r"\d+", "N", l) for l in text.splitlines() if "warning:" in l))
print("imapfuse warnings (%d kinds):%s" % (len(warns), "".join("\n  " + w for w in warns[:20])))

v = dv.imap()
found = collections.Counter()
for box in ("W1", "W2"):
    v.select(box, readonly=True)
    for it in v.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")[1]:
        if isinstance(it, tuple):
            m = re.search(rb"<(w[\d-]+)@soak>", it[1])
            if m:
                found[(box, m.group(1).decode())] += 1
stored = [t for t, (b, ok) in written.items() if ok]
wrong = [t for t in stored if found[(written[t][0], t)] != 1]
failed = [t for t, (b, ok) in written.items() if not ok]
unsent = glob.glob(work + "/data/imapfuse/unsent/**/*.eml", recursive=True)
print("writes: %d stored, %d failed, %d unsent files" % (len(stored), len(failed), len(unsent)))
if wrong:
    findings.append("stored writes not on the server exactly once: %s" % wrong[:5])
if len(unsent) < len(failed):
    findings.append("failed writes without their bytes kept: %d" % (len(failed) - len(unsent)))
try:
    shutil.copy(dv.log_path, work + "/dovecot.log")
except OSError:
    pass
dv.close()
print("work directory: %s" % work)
print("findings: %s" % ("none" if not findings else "\n  " + "\n  ".join(findings)), flush=True)
sys.exit(1 if findings else 0)

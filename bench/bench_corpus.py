"""The benchmark corpus: generated once per (messages, seed), then reused.

A corpus directory (WORK/corpus/n<N>-s<SEED>-<hash>/) holds:

  dovecot/        the root of a private Dovecot (tests/integration/dovecot.py)
                  whose maildirs hold the messages, already indexed
  tree/           the same messages as imapfuse shows them:
                  <mailbox path>/<UID>.eml, bytes exactly as the server
                  returns BODY[] (CRLF), exported with rawfetch --export
  password        the IMAP password of user "bench" (0600)
  manifest.json   counts, sizes, needles; written last (= the corpus is ready)

Messages come from tests/integration/corpus.py's generate_bench_corpus()
(median ~8 KB, lognormal tail, ~0.1 % of 1-4 MB base64 attachments, seven
folders; 10,000 messages ~150 MB) and are written as maildir files with
corpus.write_maildir() (much faster than APPEND), then Dovecot indexes them.
That generator plants no search strings, so this module adds a few needle
lines ("Reference: needle-<hex>") at the end of some messages: the searched
NEEDLE in NEEDLE_COPIES messages (the first message over 1 MB among them,
if there is one, so a search has to read a big file to the end), and a few
other needles once each.

The hash in the directory name covers the generator's source, so a change
to it makes a new corpus rather than silently reusing a stale one.
"""

import datetime
import hashlib
import imaplib
import inspect
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import corpus  # noqa: E402  (tests/integration/corpus.py, not edited here)
from dovecot import Dovecot  # noqa: E402

PLANT_VERSION = 1  # bump when the planting below changes
USER = "bench"
NEEDLE_COPIES = 5
OTHER_NEEDLES = 3

_FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R",
                 "\\Seen": "S", "\\Deleted": "T"}


def log(msg):
    print("[corpus] " + msg, flush=True)


def corpus_key(n, seed):
    h = hashlib.sha256(b"plant-v%d n%d s%d" % (PLANT_VERSION, n, seed))
    for name in ("generate_bench_corpus", "_bench_size", "_TextPool",
                 "_paragraphs", "_words", "_wrap", "_addr", "_fmt_addr",
                 "write_maildir", "BENCH_FOLDERS"):
        obj = getattr(corpus, name, None)
        try:
            src = inspect.getsource(obj) if callable(obj) else repr(obj)
        except (OSError, TypeError):
            src = repr(obj)
        h.update(name.encode() + b"\0" + src.encode())
    return "n%d-s%d-%s" % (n, seed, h.hexdigest()[:12])


def needles_for(seed):
    rng = random.Random("needles-%d" % seed)
    main = "needle-%016x" % rng.getrandbits(64)
    others = ["needle-%016x" % rng.getrandbits(64) for _ in range(OTHER_NEEDLES)]
    return main, others


def _write_maildir(dv, folder_name, m, seq):
    """corpus.write_maildir if present, else the same thing here."""
    fn = getattr(corpus, "write_maildir", None)
    if fn is not None:
        return fn(dv, folder_name, [m], start_seq=seq)
    d = os.path.join(dv.maildir_path(folder_name), "cur")
    os.makedirs(d, exist_ok=True)
    n = seq + 1
    letters = "".join(sorted(_FLAG_LETTERS[f] for f in m.flags
                             if f in _FLAG_LETTERS))
    ts = int(m.internaldate.timestamp())
    name = "%010d.M%06dP1Q%d.imapfuse-bench,S=%d,W=%d:2,%s" % (
        1_000_000_000 + n, n % 1_000_000, n, len(m.data), len(m.data), letters)
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(m.data)
    os.chown(p, dv.mail_uid, dv.mail_gid)
    os.utime(p, (ts, ts))
    return 1


def _plan(n, seed, folders):
    """Which messages get which needles: {index: [needle, ...]}.

    A first pass over the (deterministic, fast) generator finds the first
    message over 1 MB; it gets one copy of the main needle."""
    needle, others = needles_for(seed)
    big = None
    for i, (_f, m) in enumerate(corpus.generate_bench_corpus(n, seed, folders)):
        if len(m.data) > 1_000_000:
            big = i
            break
    rng = random.Random("plant-%d-%d" % (seed, n))
    idx = list(range(n))
    rng.shuffle(idx)
    k = min(NEEDLE_COPIES, n)
    main = [big] if big is not None else []
    main += [i for i in idx if i != big][:k - len(main)]
    rest = [i for i in idx if i not in main]
    plan = {i: [needle] for i in main}
    for nd, i in zip(others, rest):
        plan.setdefault(i, []).append(nd)
    return plan


def _planted(gen, plan):
    """Yields (folder, MessageSpec), needle lines appended per plan."""
    for i, (folder, m) in enumerate(gen):
        for nd in plan.get(i, ()):
            if not m.data.endswith(b"\r\n"):
                m.data += b"\r\n"
            m.data += b"Reference: " + nd.encode() + b"\r\n"
            m.needles.append(nd)
        yield folder, m


def _delimiter(conn):
    typ, data = conn.list('""', '""')
    m = re.match(rb'\([^)]*\) "((?:[^"\\]|\\.)*)"', data[0] or b"")
    return m.group(1).replace(b"\\\\", b"\\").decode() if m else "/"


def _q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _load(dv, n, seed):
    needle, others = needles_for(seed)
    folders = list(corpus.BENCH_FOLDERS)
    conn = dv.imap()
    delim = _delimiter(conn)
    names = {f: corpus.to_imap_name(f, delim) for f in folders}
    for f in folders:
        if f.upper() != "INBOX":
            typ, data = conn.create(_q(names[f]))
            if typ != "OK" and b"ALREADYEXISTS" not in (data[0] or b""):
                raise RuntimeError("CREATE %s: %s" % (f, data))
        conn.subscribe(_q(names[f]))
    t0 = time.monotonic()
    seq = 0
    per = {f: 0 for f in folders}
    sizes = []
    needle_msgs = {}
    plan = _plan(n, seed, folders)
    gen = corpus.generate_bench_corpus(n, seed, folders)
    for folder, m in _planted(gen, plan):
        seq += _write_maildir(dv, names[folder], m, seq)
        per[folder] += 1
        sizes.append(len(m.data))
        for nd in m.needles:
            needle_msgs.setdefault(nd, []).append(folder)
        if seq % 2000 == 0:
            log("wrote %d/%d messages" % (seq, n))
    t1 = time.monotonic()
    # EXAMINE makes Dovecot sync the maildirs (assign UIDs); the listing
    # FETCH fills its cache the way an APPEND would have.
    srv_n = srv_b = 0
    for f in folders:
        typ, data = conn.select(_q(names[f]), readonly=True)
        if typ != "OK":
            raise RuntimeError("EXAMINE %s: %s" % (f, data))
        if int(data[0]):
            typ, data = conn.uid("FETCH", "1:*",
                                 "(UID RFC822.SIZE INTERNALDATE FLAGS)")
            if typ != "OK":
                raise RuntimeError("FETCH %s: %s" % (f, data))
        conn.close()
        typ, data = conn.status(_q(names[f]), "(MESSAGES SIZE)")
        mm = re.search(rb"MESSAGES (\d+) SIZE (\d+)", data[0])
        if int(mm.group(1)) != per[f]:
            raise RuntimeError("%s: server has %s messages, wrote %d" % (
                f, mm.group(1).decode(), per[f]))
        srv_n += int(mm.group(1))
        srv_b += int(mm.group(2))
    conn.logout()
    if srv_b != sum(sizes):
        raise RuntimeError("server SIZE %d != bytes written %d" % (
            srv_b, sum(sizes)))
    sizes.sort()
    return {
        "messages": srv_n, "bytes": srv_b, "per_folder": per,
        "imap_names": names, "median_size": sizes[len(sizes) // 2] if sizes else 0,
        "max_size": sizes[-1] if sizes else 0,
        "over_1mb": sum(1 for s in sizes if s > 1_000_000),
        "needle": needle, "needle_messages": len(needle_msgs.get(needle, [])),
        "other_needles": others, "write_seconds": round(t1 - t0, 2),
        "index_seconds": round(time.monotonic() - t1, 2),
    }


def _export(rawfetch, dv, pwfile, tree):
    tmp = tree + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    r = subprocess.run([rawfetch, "-p", str(dv.port), "-u", USER, "-P", pwfile,
                        "--export", tmp], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("rawfetch --export failed: %s" % r.stderr.strip())
    info = json.loads(r.stdout.strip().splitlines()[-1])
    os.replace(tmp, tree)
    return info


def start_dovecot(cdir, password):
    """A Dovecot on the corpus' maildirs (data kept on stop)."""
    return Dovecot(users={USER: password}, root=os.path.join(cdir, "dovecot"),
                   max_userip_connections=500)


def prepare(work, n, seed, rawfetch, register_pid=None):
    """Returns (dovecot, corpus_dir, manifest); builds the corpus if needed.

    register_pid(pid, what) is called with the Dovecot master's pid."""
    base = os.path.join(work, "corpus")
    os.makedirs(base, exist_ok=True)
    os.chmod(work, 0o755)
    os.chmod(base, 0o755)
    key = corpus_key(n, seed)
    cdir = os.path.join(base, key)
    mpath = os.path.join(cdir, "manifest.json")
    pwfile = os.path.join(cdir, "password")
    if os.path.exists(mpath):
        with open(mpath) as f:
            man = json.load(f)
        with open(pwfile) as f:
            pw = f.read().strip()
        log("reusing %s (%d messages, %.1f MB)" % (
            cdir, man["messages"], man["bytes"] / 1e6))
        dv = start_dovecot(cdir, pw)
        if register_pid:
            register_pid(dv.proc.pid, "dovecot")
        return dv, cdir, man
    # stale corpora of the same size and seed (older generator) go away
    for d in os.listdir(base):
        if d.startswith("n%d-s%d-" % (n, seed)) and d != key:
            log("removing stale corpus %s" % d)
            shutil.rmtree(os.path.join(base, d), ignore_errors=True)
    shutil.rmtree(cdir, ignore_errors=True)
    os.makedirs(cdir)
    os.chmod(cdir, 0o755)
    pw = "pw-" + secrets.token_hex(12)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pw)
    log("generating %d messages (seed %d) into %s" % (n, seed, cdir))
    t0 = time.monotonic()
    dv = start_dovecot(cdir, pw)
    if register_pid:
        register_pid(dv.proc.pid, "dovecot")
    try:
        man = _load(dv, n, seed)
        log("loaded %d messages, %.1f MB in %.1f s; exporting the local copy" % (
            man["messages"], man["bytes"] / 1e6, time.monotonic() - t0))
        info = _export(rawfetch, dv, pwfile, os.path.join(cdir, "tree"))
        if info["messages"] != man["messages"] or \
                info["literal_bytes"] != man["bytes"]:
            raise RuntimeError("export has %d messages / %d bytes, expected "
                               "%d / %d" % (info["messages"],
                                            info["literal_bytes"],
                                            man["messages"], man["bytes"]))
    except BaseException:
        dv.stop()
        raise
    man.update(seed=seed, requested=n, key=key,
               created=datetime.datetime.now().isoformat(timespec="seconds"),
               build_seconds=round(time.monotonic() - t0, 1))
    with open(mpath + ".tmp", "w") as f:
        json.dump(man, f, indent=1)
    os.replace(mpath + ".tmp", mpath)
    log("corpus ready in %.1f s" % (time.monotonic() - t0))
    return dv, cdir, man

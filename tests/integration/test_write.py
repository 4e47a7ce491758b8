"""The write path (issue 4): rm, mv, mkdir, rmdir, rename, new files
(cp, rsync, editors), flags as an xattr, refusals.

Every outcome is checked from an independent imaplib connection to the
test's own Dovecot, never only through the mount.  Each test gets a fresh
Dovecot (they modify mail) and private XDG directories (the unsent
directory lives under $XDG_DATA_HOME).
"""

import contextlib
import ctypes
import datetime
import errno
import glob
import imaplib
import mmap
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

import conftest
import corpus
from dovecot import QUOTA_CONFIG, capability_without, imap_quote

# Lines imapfuse writes on purpose in some tests.
UNSENT_WARNING = r"could not store .* its bytes are kept in"
RM_WARNING = r"rm refused: .*UIDPLUS.*delete=trash"
MV_WARNING = r"mv between mailboxes refused"
TRASH_RM_WARNING = r"rm in the Trash mailbox refused"
NO_TRASH_WARNING = r"rm refused: delete=trash: the server has no mailbox"
TOO_BIG_WARNING = r"could not store .*more than a message may have"

# ---------------------------------------------------------------- helpers

_seq = [0]


def crlf(data):
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def make_msg(tag, lf=True, size=0):
    """A message whose Message-ID is <TAG@imapfuse.test>; LF line ends
    unless lf=False; padded to about `size` bytes."""
    body = ("From: Alice <alice@example.org>\nTo: bob@example.org\n"
            "Subject: message %s\nMessage-ID: <%s@imapfuse.test>\n"
            "Date: Mon, 1 Jan 2024 10:00:00 +0000\n\nThis is %s.\n"
            % (tag, tag, tag)).encode()
    pad = b"padding line padding line padding line padding line 0123\n"
    if size > len(body):
        body += pad * ((size - len(body)) // len(pad) + 1)
    return body if lf else crlf(body)


def new_tag(prefix="m"):
    _seq[0] += 1
    return "%s%d-%d" % (prefix, os.getpid(), _seq[0])


def q(name):
    return imap_quote(name)


def wire(name):
    """Unicode mailbox name -> modified UTF-7 (our Dovecots use "/")."""
    return corpus.to_imap_name(name)


def shown(name):
    """Directory name on the mount for a one-component mailbox name."""
    out = name.replace("%", "%25")
    if out.startswith("."):
        out = "%2E" + out[1:]
    return out


def imap_append(c, box, data, flags="", date=None):
    """APPEND; returns the new UID (APPENDUID)."""
    typ, resp = c.append(q(box), flags or None,
                         imaplib.Time2Internaldate(date) if date else None,
                         data)
    assert typ == "OK", resp
    m = re.search(rb"APPENDUID \d+ (\d+)", resp[0])
    assert m, resp
    return int(m.group(1))


def state(c, box):
    """{uid: {"flags": set, "date": epoch, "size": int, "body": bytes,
    "mid": str}} of a mailbox, read from the server."""
    typ, data = c.select(q(box), readonly=True)
    assert typ == "OK", (box, data)
    out = {}
    if int(data[0]) == 0:
        return out
    typ, data = c.uid("FETCH", "1:*",
                      "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK", data
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, body = item
        uid = int(re.search(rb"UID (\d+)", head).group(1))
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", head).group(1)
                    .decode().split()) - {"\\Recent"}
        date = corpus.parse_imap_date(
            re.search(rb'INTERNALDATE "([^"]+)"', head).group(1)).timestamp()
        size = int(re.search(rb"RFC822.SIZE (\d+)", head).group(1))
        m = re.search(rb"Message-ID:\s*<([^>]*)>", body, re.I)
        out[uid] = {"flags": flags, "date": date, "size": size, "body": body,
                    "mid": m.group(1).decode() if m else None}
    return out


def mids(c, box):
    return sorted(m["mid"] for m in state(c, box).values())


def mailboxes(c):
    return set(corpus.list_mailboxes(c))


def uid_of(c, box, tag):
    c.select(q(box), readonly=True)
    typ, data = c.uid("SEARCH", "HEADER", "Message-ID",
                      q("<%s@imapfuse.test>" % tag))
    assert typ == "OK", data
    uids = [int(x) for x in data[0].split()]
    assert len(uids) == 1, (box, tag, uids)
    return uids[0]


def eml(uid):
    return "%d.eml" % uid


def expect_errno(err, fn, *args):
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == err, (ei.value, errno.errorcode.get(err))


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def write_file(path, data, mtime=None):
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def xdg(tmp_path):
    """Private XDG data/cache dirs for the mount (the unsent directory is
    under data)."""
    d = {"XDG_DATA_HOME": str(tmp_path / "xdg-data"),
         "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    for p in d.values():
        os.makedirs(p)
    return d


@pytest.fixture
def fs(mount, xdg):
    """fs(server, *opts) -> Mount with private XDG dirs."""
    def make(server, *opts, **kw):
        env = dict(os.environ, **xdg)
        return mount(server, *opts, env=env, **kw)
    return make


@contextlib.contextmanager
def small_tmpfs(path, size):
    """A tmpfs of size ("5m") on path for the with block; the test is
    skipped where none can be mounted."""
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here: " + r.stderr.strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path])


def unsent_files(xdg):
    return sorted(glob.glob(os.path.join(
        xdg["XDG_DATA_HOME"], "imapfuse", "unsent", "**", "*"),
        recursive=True))


# ---------------------------------------------------------------- rm

@pytest.mark.imapfuse_stderr_ok(r"is not an absolute path: ignored")
def test_relative_xdg_directories_are_ignored(empty_dovecot, mount, tmp_path, monkeypatch):
    """XDG_CACHE_HOME and XDG_DATA_HOME relative to where imapfuse was
    started named other directories once it had moved to "/": listings
    were not saved, new files were kept under /reldata or refused (an
    exploratory test).  The spec says to ignore them: the defaults under
    $HOME are used, with a warning each."""
    dv = empty_dovecot()
    c = dv.imap()
    u = imap_append(c, "INBOX", make_msg("rel"))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    rel = "rel-xdg-%d" % os.getpid()
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=rel + "-cache",
               XDG_DATA_HOME=rel + "-data")
    m = mount(dv, env=env)
    assert os.listdir(os.path.join(m.path, "INBOX")) == [eml(u)]
    with open(os.path.join(m.path, "INBOX", "new.eml"), "wb") as f:
        f.write(make_msg("new"))
    assert len(state(c, "INBOX")) == 2
    m.unmount()
    warned = [l for l in m.stderr_text().splitlines() if "not an absolute path" in l]
    assert len(warned) == 2, warned
    for d in (tmp_path, "/"):
        assert not [n for n in os.listdir(d) if n.startswith(rel)]
    assert list((home / ".cache" / "imapfuse").glob("*/meta/*.mc"))
    assert (home / ".local" / "share" / "imapfuse" / "staging").is_dir()


@pytest.mark.imapfuse_stderr_ok(r"cannot keep a new file|Read-only file system")
def test_new_file_on_a_read_only_staging_disk_says_why(empty_dovecot, fs, xdg):
    """The staging directory on a read-only file system: cp failed with
    "Input/output error" (an exploratory test); now EROFS, and the warning
    names the directory."""
    dv = empty_dovecot()
    c = dv.imap()
    data_home = xdg["XDG_DATA_HOME"]
    r = subprocess.run(["mount", "--bind", "-o", "ro", data_home, data_home],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot bind-mount read-only here: " + r.stderr.strip())
    try:
        m = fs(dv)
        expect_errno(errno.EROFS, open, os.path.join(m, "INBOX", "x.eml"), "wb")
        m.unmount()
    finally:
        subprocess.run(["umount", "-l", data_home])
    assert state(c, "INBOX") == {}
    warned = [l for l in m.stderr_text().splitlines() if "cannot keep a new file" in l]
    assert warned and data_home in warned[0], warned


def test_rm_removes_only_that_message(empty_dovecot, fs):
    """The trap: another client flagged A \\Deleted without expunging;
    rm B through the mount removes B and nothing else."""
    dv = empty_dovecot()
    c = dv.imap()
    a, b, d = (imap_append(c, "INBOX", make_msg(t)) for t in ("A", "B", "C"))
    c.select("INBOX")
    c.uid("STORE", str(a), "+FLAGS.SILENT", r"(\Deleted)")
    m = fs(dv, "imap_debug")
    inbox = os.path.join(m, "INBOX")
    assert sorted(os.listdir(inbox)) == sorted([eml(a), eml(b), eml(d)])
    os.unlink(os.path.join(inbox, eml(b)))
    assert sorted(os.listdir(inbox)) == sorted([eml(a), eml(d)])
    c2 = dv.imap()
    st = state(c2, "INBOX")
    assert sorted(st) == sorted([a, d])
    assert "\\Deleted" in st[a]["flags"]
    assert st[a]["body"] == make_msg("A", lf=False)
    # Gone already: ENOENT, and nothing else happens.
    expect_errno(errno.ENOENT, os.unlink, os.path.join(inbox, eml(b)))
    # rm of the \Deleted one itself works too.
    os.unlink(os.path.join(inbox, eml(a)))
    assert sorted(state(c2, "INBOX")) == [d]
    m.unmount()
    trace = m.stderr_text()
    assert re.search(r"C: A\d+ UID EXPUNGE %d\b" % b, trace), trace[-2000:]
    assert not re.search(r"C: A\d+ (EXPUNGE|CLOSE)\b", trace), "plain EXPUNGE/CLOSE sent"


def test_rm_message_expunged_elsewhere(empty_dovecot, fs):
    dv = empty_dovecot()
    c = dv.imap()
    a = imap_append(c, "INBOX", make_msg("A"))
    b = imap_append(c, "INBOX", make_msg("B"))
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    assert sorted(os.listdir(inbox)) == sorted([eml(a), eml(b)])
    c.select("INBOX")
    c.uid("STORE", str(a), "+FLAGS.SILENT", r"(\Deleted)")
    c.uid("EXPUNGE", str(a))
    # The kernel still has the name, so rm reaches imapfuse.  Its session
    # may not have synced yet (rm costs one round trip: FETCH, STORE and
    # UID EXPUNGE pipelined), so it may learn of the expunge only from the
    # server's reply to its own: the message is gone either way, as asked,
    # and nothing else is touched.
    try:
        os.unlink(os.path.join(inbox, eml(a)))
    except FileNotFoundError:
        pass
    assert sorted(state(c, "INBOX")) == [b]
    assert os.listdir(inbox) == [eml(b)]


def test_rm_without_qresync_follows_sequence_numbers(empty_dovecot, fs):
    """rm succeeds only when the server reports the expunge of that
    message; without QRESYNC that is an EXPUNGE of its sequence number,
    which moves down as messages before it go (here two another client
    expunged, which this session learns of during the rm).  Dovecot ran
    the pipelined UID EXPUNGE before the STORE's \\Deleted showed: OK,
    nothing expunged; imapfuse asks once more, alone."""
    dv = empty_dovecot(extra_config=capability_without("QRESYNC"))
    c = dv.imap()
    u = [imap_append(c, "INBOX", make_msg("S%d" % i)) for i in range(5)]
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    assert sorted(os.listdir(inbox)) == sorted(eml(x) for x in u)
    c.select("INBOX")
    c.uid("STORE", "%d,%d" % (u[0], u[1]), "+FLAGS.SILENT", r"(\Deleted)")
    c.uid("EXPUNGE", "%d,%d" % (u[0], u[1]))
    os.unlink(os.path.join(inbox, eml(u[3])))
    assert sorted(state(c, "INBOX")) == [u[2], u[4]]
    os.unlink(os.path.join(inbox, eml(u[4])))
    os.unlink(os.path.join(inbox, eml(u[2])))
    assert state(c, "INBOX") == {}
    # (The other client's expunges show after the watcher's next round.)
    assert not set(os.listdir(inbox)) & {eml(x) for x in u[2:]}


@pytest.mark.imapfuse_stderr_ok(RM_WARNING, MV_WARNING)
def test_no_uidplus_no_move_refuses(empty_dovecot, fs):
    """Without UIDPLUS and MOVE: rm and mv refuse (ENOTSUP), change nothing,
    and say why on stderr (once)."""
    dv = empty_dovecot(extra_config=capability_without("UIDPLUS", "MOVE"))
    c = dv.imap()
    a = imap_append(c, "INBOX", make_msg("A"))
    b = imap_append(c, "INBOX", make_msg("B"))
    c.create("Other")
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    expect_errno(errno.ENOTSUP, os.unlink, os.path.join(inbox, eml(a)))
    expect_errno(errno.ENOTSUP, os.unlink, os.path.join(inbox, eml(b)))
    expect_errno(errno.ENOTSUP, os.rename, os.path.join(inbox, eml(a)),
                 os.path.join(m, "Other", eml(a)))
    st = state(c, "INBOX")
    assert sorted(st) == [a, b]
    assert all("\\Deleted" not in x["flags"] for x in st.values())
    assert state(c, "Other") == {}
    assert sorted(os.listdir(inbox)) == sorted([eml(a), eml(b)])
    m.unmount()
    err = m.stderr_text()
    assert len(re.findall(RM_WARNING, err)) == 1, err  # once, not per file
    assert re.search(MV_WARNING, err), err


def test_no_move_falls_back_to_copy_and_uid_expunge(empty_dovecot, fs):
    """Without MOVE (UIDPLUS present): mv = UID COPY + STORE \\Deleted +
    UID EXPUNGE; another client's \\Deleted message survives."""
    dv = empty_dovecot(extra_config=capability_without("MOVE"))
    c = dv.imap()
    keep = imap_append(c, "INBOX", make_msg("K"))
    a = imap_append(c, "INBOX", make_msg("A"), flags=r"(\Flagged $Work)")
    c.select("INBOX")
    c.uid("STORE", str(keep), "+FLAGS.SILENT", r"(\Deleted)")
    c.create("Other")
    m = fs(dv, "imap_debug")
    os.rename(os.path.join(m, "INBOX", eml(a)), os.path.join(m, "Other", eml(a)))
    st = state(c, "Other")
    assert len(st) == 1
    (nu, msg), = st.items()
    assert msg["mid"] == "A@imapfuse.test"
    assert {"\\Flagged", "$Work"} <= msg["flags"]
    assert os.listdir(os.path.join(m, "Other")) == [eml(nu)]
    assert sorted(state(c, "INBOX")) == [keep]
    m.unmount()
    trace = m.stderr_text()
    assert re.search(r"C: A\d+ UID COPY %d " % a, trace)
    assert not re.search(r"C: A\d+ (UID )?MOVE\b", trace)
    assert not re.search(r"C: A\d+ (EXPUNGE|CLOSE)\b", trace)


@pytest.mark.imapfuse_stderr_ok(RM_WARNING)
def test_no_uidplus_with_move(empty_dovecot, fs):
    """UIDPLUS missing, MOVE present: rm refuses, mv works (no COPYUID,
    so the destination listing is fetched again)."""
    dv = empty_dovecot(extra_config=capability_without("UIDPLUS"))
    c = dv.imap()
    a = imap_append(c, "INBOX", make_msg("A"))
    c.create("Other")
    m = fs(dv)
    expect_errno(errno.ENOTSUP, os.unlink, os.path.join(m, "INBOX", eml(a)))
    os.rename(os.path.join(m, "INBOX", eml(a)), os.path.join(m, "Other", "x.eml"))
    assert mids(c, "Other") == ["A@imapfuse.test"]
    assert state(c, "INBOX") == {}
    nu = uid_of(c, "Other", "A")
    assert os.listdir(os.path.join(m, "Other")) == [eml(nu)]


# ---------------------------------------------------------------- delete=trash

def test_delete_trash(empty_dovecot, fs):
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Trash")
    a = imap_append(c, "INBOX", make_msg("A"), flags=r"(\Seen)")
    b = imap_append(c, "INBOX", make_msg("B"))
    m = fs(dv, "delete=trash")
    os.unlink(os.path.join(m, "INBOX", eml(a)))
    assert sorted(state(c, "INBOX")) == [b]
    tr = state(c, "Trash")
    assert [x["mid"] for x in tr.values()] == ["A@imapfuse.test"]
    assert "\\Seen" in next(iter(tr.values()))["flags"]
    # rm inside the Trash really removes (UIDPLUS).
    tuid = next(iter(tr))
    assert os.listdir(os.path.join(m, "Trash")) == [eml(tuid)]
    os.unlink(os.path.join(m, "Trash", eml(tuid)))
    assert state(c, "Trash") == {}
    assert sorted(state(c, "INBOX")) == [b]


@pytest.mark.imapfuse_stderr_ok(TRASH_RM_WARNING)
def test_delete_trash_without_uidplus_and_move(empty_dovecot, fs):
    """delete=trash on a server with neither UIDPLUS nor MOVE: rm copies to
    Trash and flags the original \\Deleted (imapfuse never expunges it);
    another client's \\Deleted message is untouched; rm in the Trash is
    refused."""
    dv = empty_dovecot(extra_config=capability_without("UIDPLUS", "MOVE"))
    c = dv.imap()
    c.create("Trash")
    other = imap_append(c, "INBOX", make_msg("O"))
    a = imap_append(c, "INBOX", make_msg("A"))
    c.select("INBOX")
    c.uid("STORE", str(other), "+FLAGS.SILENT", r"(\Deleted)")
    m = fs(dv, "delete=trash")
    os.unlink(os.path.join(m, "INBOX", eml(a)))
    st = state(c, "INBOX")
    assert sorted(st) == [other, a]
    assert "\\Deleted" in st[a]["flags"] and "\\Deleted" in st[other]["flags"]
    tr = state(c, "Trash")
    assert [x["mid"] for x in tr.values()] == ["A@imapfuse.test"]
    assert "\\Deleted" not in next(iter(tr.values()))["flags"]
    tuid = next(iter(tr))
    expect_errno(errno.ENOTSUP, os.unlink, os.path.join(m, "Trash", eml(tuid)))
    assert sorted(state(c, "Trash")) == [tuid]
    # Its file is still listed (nobody expunged it), so rm is run again:
    # that added a copy to the Trash each time.
    os.unlink(os.path.join(m, "INBOX", eml(a)))
    os.unlink(os.path.join(m, "INBOX", eml(a)))
    assert sorted(state(c, "Trash")) == [tuid]
    assert sorted(state(c, "INBOX")) == [other, a]


COURIER_NAMESPACE = """
namespace inbox {
  separator = .
  prefix = INBOX.
  mailbox Trash {
    special_use =
  }
  mailbox Sent {
    special_use =
  }
  mailbox Drafts {
    special_use =
  }
}
"""
CREATE_REFUSED_WARNING = r"mkdir of TopLevel refused by the server: .*namespace"


@pytest.mark.imapfuse_stderr_ok(CREATE_REFUSED_WARNING)
def test_folders_under_inbox_trash_and_refused_mkdir(empty_dovecot, fs):
    """An account whose folders all live under "INBOX." (Courier, old
    Cyrus) and that marks none with special-use: delete=trash found no
    Trash in INBOX.Trash (rm failed ENOTSUP, "no mailbox named Trash"),
    and a mkdir at the top the server refused failed with a bare EIO, its
    reason only in the debug trace."""
    dv = empty_dovecot(extra_config=[COURIER_NAMESPACE, capability_without("SPECIAL-USE")],
                       delimiter=".")
    c = dv.imap()
    assert c.create("INBOX.Trash")[0] == "OK"
    a = imap_append(c, "INBOX", make_msg("A"))
    m = fs(dv, "delete=trash")
    os.unlink(os.path.join(m, "INBOX", eml(a)))
    assert state(c, "INBOX") == {}
    assert mids(c, "INBOX.Trash") == ["A@imapfuse.test"]
    expect_errno(errno.EIO, os.mkdir, os.path.join(m, "TopLevel"))
    assert re.search(CREATE_REFUSED_WARNING, m.stderr_text())


def test_delete_trash_with_move_only(empty_dovecot, fs):
    """No UIDPLUS but MOVE: delete=trash moves with UID MOVE."""
    dv = empty_dovecot(extra_config=capability_without("UIDPLUS"))
    c = dv.imap()
    c.create("Trash")
    a = imap_append(c, "INBOX", make_msg("A"))
    m = fs(dv, "delete=trash")
    os.unlink(os.path.join(m, "INBOX", eml(a)))
    assert state(c, "INBOX") == {}
    assert mids(c, "Trash") == ["A@imapfuse.test"]


@pytest.mark.imapfuse_stderr_ok(NO_TRASH_WARNING)
def test_delete_trash_without_trash_mailbox(empty_dovecot, fs):
    dv = empty_dovecot()
    c = dv.imap()
    a = imap_append(c, "INBOX", make_msg("A"))
    m = fs(dv, "delete=trash")
    expect_errno(errno.ENOTSUP, os.unlink, os.path.join(m, "INBOX", eml(a)))
    assert sorted(state(c, "INBOX")) == [a]


@pytest.mark.imapfuse_stderr_ok(NO_TRASH_WARNING)
def test_written_name_ends_after_a_refused_rm_and_at_a_first_listing(empty_dovecot, fs):
    """Two ways a written file's name outlived its message, expunged by
    another client: an rm refused before it reached the server
    (delete=trash, no Trash) left the file marked as in an operation of
    its own, so the listing that saw the expunge did not end the name;
    and a folder listed for the first time after the expunge reported
    nothing removed.  Either way a utimes through the name stored the
    deleted message again."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Drafts")
    c.create("Never")
    m = fs(dv, "delete=trash", "poll=1")
    for name, listed_first, refused_rm in (("Drafts", True, True), ("Never", False, False)):
        box = os.path.join(m, name)
        if listed_first:
            assert os.listdir(box) == []
        write_file(os.path.join(box, "x.eml"), make_msg("X" + name))
        ux = uid_of(c, name, "X" + name)
        if refused_rm:
            expect_errno(errno.ENOTSUP, os.unlink, os.path.join(box, "x.eml"))
        c.select(q(name))
        c.uid("STORE", str(ux), "+FLAGS.SILENT", r"(\Deleted)")
        c.uid("EXPUNGE", str(ux))
        # A listing (poll=1: each is at most 1.5 s old) sees the expunge,
        # and the name ends with it.
        wait_for(lambda: os.listdir(box) is not None and
                 not os.path.exists(os.path.join(box, "x.eml")), timeout=10,
                 what="x.eml in %s ending with its message" % name)
        expect_errno(errno.ENOENT, os.utime, os.path.join(box, "x.eml"),
                     (1577836800, 1577836800))
        assert state(c, name) == {}


# ---------------------------------------------------------------- mv

def test_mv_between_mailboxes_shows_new_uid(empty_dovecot, fs):
    """mv DIR1/N.eml DIR2/: UID MOVE; DIR2 lists the new UID at once; the
    name the kernel was given (DIR2/N.eml) resolves to DIR2's own message
    N, untouched."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Other")
    o1 = imap_append(c, "Other", make_msg("O1"))
    o2 = imap_append(c, "Other", make_msg("O2"))
    a1 = imap_append(c, "INBOX", make_msg("A1"), flags=r"(\Answered $Work)")
    assert a1 == o1 == 1
    m = fs(dv)
    other = os.path.join(m, "Other")
    before = open(os.path.join(other, eml(o1)), "rb").read()
    os.rename(os.path.join(m, "INBOX", eml(a1)), os.path.join(other, eml(a1)))
    nu = uid_of(c, "Other", "A1")
    assert nu not in (o1, o2)
    assert sorted(os.listdir(other)) == sorted([eml(o1), eml(o2), eml(nu)])
    assert os.listdir(os.path.join(m, "INBOX")) == []
    # Other/1.eml is still Other's own message 1.
    wait_for(lambda: os.stat(os.path.join(other, eml(o1))).st_size == len(before),
             what="stale entry invalidated")
    assert open(os.path.join(other, eml(o1)), "rb").read() == before
    assert open(os.path.join(other, eml(nu)), "rb").read() == make_msg("A1", lf=False)
    st = state(c, "Other")
    assert {"\\Answered", "$Work"} <= st[nu]["flags"]
    assert state(c, "INBOX") == {}
    # mv to a name that is not a message name: the name answers for the
    # moved message a while (mv stats it), but is not listed.
    os.rename(os.path.join(other, eml(nu)), os.path.join(m, "INBOX", "whatever.eml"))
    back = uid_of(c, "INBOX", "A1")
    assert os.listdir(os.path.join(m, "INBOX")) == [eml(back)]
    with open(os.path.join(m, "INBOX", "whatever.eml"), "rb") as f:
        assert f.read() == make_msg("A1", lf=False)
    assert (os.stat(os.path.join(m, "INBOX", "whatever.eml")).st_ino
            == os.stat(os.path.join(m, "INBOX", eml(back))).st_ino)


def test_mv_refusals(empty_dovecot, fs):
    dv = empty_dovecot()
    c = dv.imap()
    a = imap_append(c, "INBOX", make_msg("A"))
    c.create("Sub")
    m = fs(dv)
    src = os.path.join(m, "INBOX", eml(a))
    # Within one mailbox: a message's name is its UID.
    expect_errno(errno.EPERM, os.rename, src, os.path.join(m, "INBOX", "new.eml"))
    expect_errno(errno.EPERM, os.rename, src, os.path.join(m, "INBOX", "99.eml"))
    # Into the root, which is not a mailbox.
    expect_errno(errno.EPERM, os.rename, src, os.path.join(m, eml(a)))
    expect_errno(errno.ENOENT, os.rename, os.path.join(m, "INBOX", "77.eml"),
                 os.path.join(m, "Sub", "77.eml"))
    assert sorted(state(c, "INBOX")) == [a]
    assert state(c, "Sub") == {}


# ---------------------------------------------------------------- directories

# "Q3%2024" and "100%AB": a '%' and two hex digits the escaping never
# writes are the name's own (they were decoded: "Q3 24", and EINVAL for
# "100%AB", which is not UTF-8 decoded; an exploratory test).
NAMES = ["with space", "Réunions ☺", 'quo"te', "back\\slash", "50% off",
         "star*", "amp&er", "{3}", "日本語", "Q3%2024", "100%AB"]


# The protocol trace, attached to the report if the test fails: a rare
# EEXIST from the second mkdir below (2 CI runs in many, never in a loop)
# is still unexplained; the trace shows whether a CREATE went out.
@pytest.mark.imapfuse_stderr_ok(r"imapfuse\[#\d+\] (C|S):|^    ")
@pytest.mark.parametrize("name", NAMES)
def test_directory_names(empty_dovecot, fs, name):
    """mkdir, cp in, mv, rm, rename, rmdir with awkward names; checked by
    the name the server has."""
    dv = empty_dovecot()
    c = dv.imap()
    a = imap_append(c, "INBOX", make_msg("A"))
    m = fs(dv, "imap_debug")
    os.mkdir(os.path.join(m, name))
    assert wire(name) in mailboxes(c)
    d = os.path.join(m, shown(name))
    assert shown(name) in os.listdir(m)
    assert os.listdir(d) == []
    # A new file with the same awkward characters in its name.
    write_file(os.path.join(d, name + ".eml"), make_msg("N"))
    n = uid_of(c, wire(name), "N")
    assert os.listdir(d) == [eml(n)]
    os.rename(os.path.join(m, "INBOX", eml(a)), os.path.join(d, eml(a)))
    assert sorted(mids(c, wire(name))) == ["A@imapfuse.test", "N@imapfuse.test"]
    assert state(c, "INBOX") == {}
    # rmdir of a mailbox with mail: ENOTEMPTY.
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    # A child mailbox with the same name inside.
    os.mkdir(os.path.join(d, name))
    assert wire(name) + "/" + wire(name) in mailboxes(c)
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    os.rmdir(os.path.join(d, shown(name)))
    assert wire(name) + "/" + wire(name) not in mailboxes(c)
    # Rename (RENAME) keeps the mail.
    os.rename(d, os.path.join(m, name + " 2"))
    assert wire(name + " 2") in mailboxes(c)
    assert wire(name) not in mailboxes(c)
    d2 = os.path.join(m, shown(name + " 2"))
    assert len(os.listdir(d2)) == 2
    for f in os.listdir(d2):
        os.unlink(os.path.join(d2, f))
    assert state(c, wire(name + " 2")) == {}
    os.rmdir(d2)
    assert wire(name + " 2") not in mailboxes(c)
    assert shown(name + " 2") not in os.listdir(m)


@pytest.mark.imapfuse_stderr_ok(r"mkdir of .* refused by the server")
def test_mkdir_refused_by_the_server_says_why(empty_dovecot, fs):
    """mkdir a name the server will not take (Dovecot's maildir: a '.'
    with '/' as delimiter) failed with "Invalid argument" and nothing
    else; the server's reason was only in the debug log (an exploratory
    test)."""
    dv = empty_dovecot()
    c = dv.imap()
    if c.create("probe.dot")[0] == "OK":
        c.delete("probe.dot")
        pytest.skip("this server takes a '.' in a folder name")
    m = fs(dv)
    expect_errno(errno.EINVAL, os.mkdir, os.path.join(m, "a.b"))
    why = [l for l in m.stderr_text().splitlines() if "refused by the server" in l]
    assert len(why) == 1 and "a.b" in why[0] and "not allowed" in why[0], why
    assert "a.b" not in mailboxes(c)


@pytest.mark.imapfuse_stderr_ok(r"contains the server's hierarchy delimiter")
def test_directory_refusals(empty_dovecot, fs):
    dv = empty_dovecot(delimiter=".")
    c = dv.imap()
    c.create("Box")
    imap_append(c, "INBOX", make_msg("A"))
    m = fs(dv)
    # The server's delimiter cannot be part of one name: EINVAL, and the
    # log says why.
    expect_errno(errno.EINVAL, os.mkdir, os.path.join(m, "a.b"))
    expect_errno(errno.EINVAL, os.rename, os.path.join(m, "Box"),
                 os.path.join(m, "B.ox"))
    assert "a.b" not in mailboxes(c) and "a" not in mailboxes(c)
    why = [l for l in m.stderr_text().splitlines() if "hierarchy delimiter" in l]
    assert len(why) == 2 and "mkdir" in why[0] and "rename" in why[1], why
    # INBOX is never deleted or renamed.
    expect_errno(errno.EPERM, os.rmdir, os.path.join(m, "INBOX"))
    expect_errno(errno.EPERM, os.rename, os.path.join(m, "INBOX"),
                 os.path.join(m, "Inbox2"))
    assert "INBOX" in mailboxes(c) and "Inbox2" not in mailboxes(c)
    assert len(state(c, "INBOX")) == 1
    # Existing names.
    expect_errno(errno.EEXIST, os.mkdir, os.path.join(m, "Box"))
    expect_errno(errno.ENOENT, os.rmdir, os.path.join(m, "Nope"))
    # Files cannot be created outside a mailbox (the root).
    expect_errno(errno.EPERM, write_file, os.path.join(m, "x.eml"), b"x")
    # A child with a dot-delimited server name works as a directory.
    os.mkdir(os.path.join(m, "Box", "Child"))
    assert "Box.Child" in mailboxes(c)
    # Moving a directory under another one: RENAME, children follow.
    imap_append(c, "Box.Child", make_msg("kid"))
    os.mkdir(os.path.join(m, "Top"))
    os.rename(os.path.join(m, "Box"), os.path.join(m, "Top", "Box"))
    assert {"Top.Box", "Top.Box.Child"} <= mailboxes(c)
    assert not {"Box", "Box.Child"} & mailboxes(c)
    assert mids(c, "Top.Box.Child") == ["kid@imapfuse.test"]
    assert len(os.listdir(os.path.join(m, "Top", "Box", "Child"))) == 1


def test_rmdir_asks_the_server(empty_dovecot, fs):
    """The mount saw an empty mailbox; another client then put mail in it:
    rmdir must still refuse (ENOTEMPTY), not trust the cache."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Box")
    m = fs(dv)
    assert os.listdir(os.path.join(m, "Box")) == []
    imap_append(c, "Box", make_msg("late"))
    expect_errno(errno.ENOTEMPTY, os.rmdir, os.path.join(m, "Box"))
    assert mids(c, "Box") == ["late@imapfuse.test"]
    # And a child created elsewhere, too.  (The read path looks for a
    # directory it does not know only if its LIST is over a second old.)
    c.create("Empty")
    time.sleep(1.1)
    assert os.listdir(os.path.join(m, "Empty")) == []
    c.create("Empty/Child")
    expect_errno(errno.ENOTEMPTY, os.rmdir, os.path.join(m, "Empty"))
    assert {"Empty", "Empty/Child"} <= mailboxes(c)
    # A file still being written in it, or waiting for rsync's rename:
    # its DELETE would leave those bytes nowhere to go.
    os.mkdir(os.path.join(m, "Busy"))
    with open(os.path.join(m, "Busy", "open.eml"), "wb") as f:
        f.write(make_msg("open"))
        expect_errno(errno.ENOTEMPTY, os.rmdir, os.path.join(m, "Busy"))
    assert mids(c, "Busy") == ["open@imapfuse.test"]
    os.unlink(os.path.join(m, "Busy", eml(uid_of(c, "Busy", "open"))))
    write_file(os.path.join(m, "Busy", ".r.eml.Ab12Cd"), make_msg("temp"))
    expect_errno(errno.ENOTEMPTY, os.rmdir, os.path.join(m, "Busy"))
    os.unlink(os.path.join(m, "Busy", ".r.eml.Ab12Cd"))
    os.rmdir(os.path.join(m, "Busy"))
    assert "Busy" not in mailboxes(c)


def _tree(dv, in_sub=5):
    """Mailboxes Tree (5 messages) and Tree/Sub (in_sub); an IMAP client."""
    c = dv.imap()
    c.create("Tree")
    c.create("Tree/Sub")
    for i in range(5):
        imap_append(c, "Tree", make_msg("t%d" % i))
    for i in range(in_sub):
        imap_append(c, "Tree/Sub", make_msg("s%d" % i))
    return c


def test_rm_r(empty_dovecot, fs):
    dv = empty_dovecot()
    c = _tree(dv)
    m = fs(dv)
    shutil.rmtree(os.path.join(m, "Tree"))
    assert not {"Tree", "Tree/Sub"} & mailboxes(c)
    assert "Tree" not in os.listdir(m)


def test_rm_r_after_reading_the_subfolder(empty_dovecot, fs):
    """Reading Tree/Sub in order (a scan) selects it on several
    connections, and the server drops those when it is deleted (Dovecot:
    "Selected mailbox was deleted"): what rm -r sends after the rmdir of
    Sub must not land on one of them (the rmdir of Tree failed with EIO)."""
    dv = empty_dovecot()
    c = _tree(dv, 60)
    m = fs(dv, "readahead_batches=3", "cache=none")
    sub = os.path.join(m, "Tree", "Sub")
    for n in sorted(os.listdir(sub), key=lambda n: int(n[:-4])):
        with open(os.path.join(sub, n), "rb") as f:
            assert f.read()
    shutil.rmtree(os.path.join(m, "Tree"))
    assert not {"Tree", "Tree/Sub"} & mailboxes(c)
    assert "Tree" not in os.listdir(m)


def test_rm_r_of_a_folder_that_only_holds_folders(empty_dovecot, fs):
    """P exists only because P/C does (\\Noselect); Dovecot drops it with
    its last child, so rm -r found P gone at its rmdir and failed with
    ENOENT although everything was deleted.  A folder that could hold
    mail and is gone is still ENOENT."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("P/C")
    c.create("Q/R")
    imap_append(c, "Q/R", make_msg("qr"))
    c.create("Gone")
    typ, data = c.list('""', "P")
    assert typ == "OK" and b"\\Noselect" in data[0], data
    m = fs(dv)
    assert os.listdir(os.path.join(m, "P")) == ["C"]
    shutil.rmtree(os.path.join(m, "P"))
    r = subprocess.run(["rm", "-r", os.path.join(m, "Q")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not {"P", "P/C", "Q", "Q/R"} & mailboxes(c)
    assert not {"P", "Q"} & set(os.listdir(m))
    assert os.listdir(os.path.join(m, "Gone")) == []
    c.delete("Gone")
    expect_errno(errno.ENOENT, os.rmdir, os.path.join(m, "Gone"))


# ---------------------------------------------------------------- new files

def test_cp_appends_one_message(empty_dovecot, fs, tmp_path):
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    src = tmp_path / "in.eml"
    data = make_msg("cp")
    src.write_bytes(data)
    t0 = time.time()
    subprocess.run(["cp", str(src), inbox + "/"], check=True)
    st = state(c, "INBOX")
    assert len(st) == 1
    (uid, msg), = st.items()
    assert msg["body"] == crlf(data)
    assert msg["flags"] == set()
    assert abs(msg["date"] - t0) < 120
    assert os.listdir(inbox) == [eml(uid)]
    assert open(os.path.join(inbox, eml(uid)), "rb").read() == crlf(data)
    # \Seen is not set by reading.
    assert state(c, "INBOX")[uid]["flags"] == set()

    # cp -p: INTERNALDATE = the file's mtime.
    src2 = tmp_path / "old.eml"
    when = 1262304000 + 3600  # 2010-01-01 01:00 UTC
    write_file(src2, make_msg("cp-p"), mtime=when)
    subprocess.run(["cp", "-p", str(src2), inbox + "/"], check=True)
    u2 = uid_of(c, "INBOX", "cp-p")
    assert state(c, "INBOX")[u2]["date"] == when
    assert os.stat(os.path.join(inbox, eml(u2))).st_mtime == when
    assert sorted(os.listdir(inbox)) == sorted([eml(uid), eml(u2)])

    # Written in many small pieces (a shell redirection), CRLF already.
    big = make_msg("pieces", lf=False, size=3 << 20)
    with open(os.path.join(inbox, "pieces.eml"), "wb") as f:
        for off in range(0, len(big), 4096):
            f.write(big[off:off + 4096])
            f.flush()
    u3 = uid_of(c, "INBOX", "pieces")
    assert state(c, "INBOX")[u3]["body"] == big
    assert len(state(c, "INBOX")) == 3


def test_new_file_behaviour(empty_dovecot, fs, tmp_path):
    """The name a file was written under lingers briefly (stat, chmod,
    rm of it act on the message it became); cp of identical bytes again
    adds nothing; a later utimes re-dates it (replace), and new bytes
    replace it without taking the identical copy's bytes along."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    p = os.path.join(inbox, "note.eml")
    data = make_msg("note")
    write_file(p, data)
    uid = uid_of(c, "INBOX", "note")
    st = os.stat(p)
    assert st.st_size == len(data)  # the bytes as written
    os.chmod(p, 0o644)  # quietly accepted for a new file (cp -a, install)
    assert os.stat(p).st_mode & 0o777 == 0o644
    assert open(p, "rb").read() == data
    # Same bytes again: the same message (dedup), nothing appended.
    write_file(os.path.join(inbox, "again.eml"), data)
    assert list(state(c, "INBOX")) == [uid]
    # utimes after close: the message is replaced by one with that date.
    when = 1400000000
    os.utime(p, (when, when))
    st2 = state(c, "INBOX")
    assert len(st2) == 1
    (nu, msg), = st2.items()
    assert nu != uid and msg["date"] == when and msg["body"] == crlf(data)
    assert os.listdir(inbox) == [eml(nu)]
    # Appending to it with >> (reopen, write, close) replaces it again;
    # again.eml, which stood for the old bytes, gets a message of its own.
    with open(p, "ab") as f:
        f.write(b"more\n")
    st3 = state(c, "INBOX")
    assert sorted(v["body"] for v in st3.values()) == sorted(
        [crlf(data + b"more\n"), crlf(data)])
    assert [v["date"] for v in st3.values()
            if v["body"] == crlf(data + b"more\n")] == [when]
    # rm of a name removes the message it became.
    os.unlink(p)
    assert [v["body"] for v in state(c, "INBOX").values()] == [crlf(data)]
    os.unlink(os.path.join(inbox, "again.eml"))
    assert state(c, "INBOX") == {}
    assert os.listdir(inbox) == []
    # A file removed while still open is never sent.
    with open(os.path.join(inbox, "scratch.eml"), "wb") as f:
        f.write(make_msg("scratch"))
        os.unlink(os.path.join(inbox, "scratch.eml"))
    assert state(c, "INBOX") == {}
    # An empty file is not a message: nothing is sent.
    open(os.path.join(inbox, "empty.eml"), "wb").close()
    assert state(c, "INBOX") == {}


def test_copy_of_existing_message_is_a_copy(empty_dovecot, fs):
    """A file whose bytes matched a message already there (nothing was
    appended) is a copy of it: rm of the file's name does not delete that
    message, mv sends a copy, a new date appends a new message."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Other")
    data = make_msg("X")
    x = imap_append(c, "INBOX", crlf(data), flags=r"(\Seen)")
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    write_file(os.path.join(inbox, "y.eml"), data)
    assert list(state(c, "INBOX")) == [x]
    os.unlink(os.path.join(inbox, "y.eml"))
    assert list(state(c, "INBOX")) == [x]
    write_file(os.path.join(inbox, "z.eml"), data)
    os.rename(os.path.join(inbox, "z.eml"), os.path.join(m, "Other", "z.eml"))
    assert list(state(c, "INBOX")) == [x]
    assert mids(c, "Other") == ["X@imapfuse.test"]
    write_file(os.path.join(inbox, "w.eml"), data)
    os.utime(os.path.join(inbox, "w.eml"), (1000000000, 1000000000))
    st = state(c, "INBOX")
    assert len(st) == 2 and x in st and "\\Seen" in st[x]["flags"]
    assert sorted(v["date"] for u, v in st.items() if u != x) == [1000000000]


def test_removing_the_message_a_copy_stands_for_keeps_the_copy(empty_dovecot, fs):
    """cp 1.eml c.eml in one folder appends nothing (dedup): c.eml stands
    for message 1. rm 1.eml, mv 1.eml elsewhere, or a new version of the
    file that made the message, must not take c.eml's bytes with them:
    the copy gets a message of its own first."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Other")
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    # rm of the message (by its UID name).
    a = make_msg("A")
    ua = imap_append(c, "INBOX", crlf(a))
    with open(os.path.join(inbox, eml(ua)), "rb") as f:
        write_file(os.path.join(inbox, "copy-a.eml"), f.read())
    assert list(state(c, "INBOX")) == [ua]  # nothing appended yet
    os.unlink(os.path.join(inbox, eml(ua)))
    st = state(c, "INBOX")
    assert ua not in st and [v["body"] for v in st.values()] == [crlf(a)]
    with open(os.path.join(inbox, "copy-a.eml"), "rb") as f:
        assert f.read() == crlf(a)
    # mv of the message to another folder.
    b = make_msg("B")
    ub = imap_append(c, "INBOX", crlf(b))
    write_file(os.path.join(inbox, "copy-b.eml"), crlf(b))
    os.rename(os.path.join(inbox, eml(ub)), os.path.join(m, "Other", eml(ub)))
    assert mids(c, "Other") == ["B@imapfuse.test"]
    assert sorted(mids(c, "INBOX")) == ["A@imapfuse.test", "B@imapfuse.test"]
    # rm of a new file's name removes the message it made, not its copy.
    d = make_msg("D")
    write_file(os.path.join(inbox, "d.eml"), d)
    write_file(os.path.join(inbox, "copy-d.eml"), d)
    os.unlink(os.path.join(inbox, "d.eml"))
    assert mids(c, "INBOX").count("D@imapfuse.test") == 1
    with open(os.path.join(inbox, "copy-d.eml"), "rb") as f:
        assert f.read() == d  # a new file's name reads as it was written
    # The copy is now the only name of its message: rm removes it.
    os.unlink(os.path.join(inbox, "copy-d.eml"))
    assert "D@imapfuse.test" not in mids(c, "INBOX")


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_append_with_synchronising_literals(empty_dovecot, fs, xdg):
    """Without LITERAL+ the APPEND waits for the server's "+"; a refusal
    still comes back as the close() error."""
    dv = empty_dovecot(extra_config=[capability_without("LITERAL+"),
                                     QUOTA_CONFIG(storage="64K")])
    c = dv.imap()
    m = fs(dv)
    data = make_msg("sync", size=20 * 1024)
    write_file(os.path.join(m, "INBOX", "sync.eml"), data)
    assert [x["body"] for x in state(c, "INBOX").values()] == [crlf(data)]
    f = open(os.path.join(m, "INBOX", "big.eml"), "wb")
    f.write(make_msg("syncbig", size=100 * 1024))
    expect_errno(errno.EDQUOT, f.close)
    assert mids(c, "INBOX") == ["sync@imapfuse.test"]
    # The connection is still in step after the refused literal.
    write_file(os.path.join(m, "INBOX", "after.eml"), make_msg("after"))
    assert sorted(mids(c, "INBOX")) == ["after@imapfuse.test", "sync@imapfuse.test"]


@pytest.mark.parametrize("literals", ["LITERAL+", "LITERAL-", "sync"])
@pytest.mark.parametrize("scheme", ["imap", "imaps"])
def test_append_literal_paths(empty_dovecot, fs, scheme, literals):
    """Every way a literal goes out (pipelined after a NOOP with LITERAL+,
    LITERAL- up to 4096 bytes, synchronising), in plain text and TLS: the
    literal is sent from the staging file in pieces, byte for byte."""
    caps = {"LITERAL+": "",
            "LITERAL-": capability_without("LITERAL+").rstrip("\n") + " LITERAL-\n",
            "sync": capability_without("LITERAL+")}[literals]
    dv = empty_dovecot(tls=scheme == "imaps", extra_config=caps)
    c = dv.imap()
    opts = ("cafile=" + dv.cafile,) if scheme == "imaps" else ()
    m = fs(dv, *opts, scheme=scheme, tls=None if scheme == "imaps" else "off")
    sent = []
    for name, size, lf in (("small", 3000, False), ("big", 3 << 20, True),
                           ("big-crlf", (3 << 20) + 1, False)):
        data = make_msg(new_tag(name), lf=lf, size=size)
        write_file(os.path.join(m, "INBOX", name + ".eml"), data)
        sent.append(crlf(data))
    assert sorted(x["body"] for x in state(c, "INBOX").values()) == sorted(sent)


def test_dedup_off_appends_again(empty_dovecot, fs):
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "dedup=off")
    data = make_msg("twice")
    write_file(os.path.join(m, "INBOX", "a.eml"), data)
    write_file(os.path.join(m, "INBOX", "b.eml"), data)
    assert mids(c, "INBOX") == ["twice@imapfuse.test"] * 2


def test_dedup_off_append_after_selected_mailbox_deleted(empty_dovecot, fs, xdg):
    """Another client deletes the mailbox our one connection has selected.
    Dovecot then answers that session's next NOOP or APPEND with BYE, so
    an APPEND sent alone may or may not have run, and without dedup it
    cannot be sent again safely.  imapfuse sends a NOOP first in the same
    write: the BYE answers the NOOP, so the APPEND never ran and goes again
    on a new connection.  Stored once, nothing left unsent."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Old")
    imap_append(c, "Old", make_msg("old"))
    m = fs(dv, "dedup=off", "connections=1", "imap_debug")
    old = os.path.join(m, "Old")
    name, = os.listdir(old)
    with open(os.path.join(old, name), "rb") as f:
        assert b"This is old." in f.read()  # the connection selects Old
    c.delete("Old")
    write_file(os.path.join(m, "INBOX", "n.eml"), make_msg("new"))
    assert mids(c, "INBOX") == ["new@imapfuse.test"]
    assert unsent_files(xdg) == []


def test_files_written_while_the_folder_list_is_refreshed(empty_dovecot, fs, xdg):
    """A LIST used to mark every folder absent and then the listed ones
    present again, while other threads read those marks without the tree
    lock: a file closed in that instant was refused ("not a mailbox") and
    left in the unsent directory.  Here a writer and two threads that list
    the root (a LIST each time) run at once: every file is stored."""
    dv = empty_dovecot()
    c = dv.imap()
    for i in range(40):
        c.create("F%02d" % i)
    c.create("W")
    m = fs(dv, "dir_timeout=0", "list_max_age=0")
    stop = threading.Event()

    def lister():
        while not stop.is_set():
            os.listdir(m)
    listers = [threading.Thread(target=lister) for _ in range(2)]
    for t in listers:
        t.start()
    errors = []
    try:
        for i in range(300):
            try:
                write_file(os.path.join(m, "W", "n%d.eml" % i), make_msg("n%d" % i))
            except OSError as e:
                errors.append(e)
    finally:
        stop.set()
        for t in listers:
            t.join()
    assert errors == []
    assert len(mids(c, "W")) == 300
    assert unsent_files(xdg) == []


def test_dedup_ignores_deleted_and_different(empty_dovecot, fs):
    """Identical bytes only: a \\Deleted twin or a same-size different
    message does not count."""
    dv = empty_dovecot()
    c = dv.imap()
    data = make_msg("dd")
    twin = imap_append(c, "INBOX", crlf(data))
    c.select("INBOX")
    c.uid("STORE", str(twin), "+FLAGS.SILENT", r"(\Deleted)")
    same_size = crlf(data).replace(b"This is dd.", b"This is DD.")
    imap_append(c, "INBOX", same_size)
    m = fs(dv)
    write_file(os.path.join(m, "INBOX", "x.eml"), data)
    assert len(state(c, "INBOX")) == 3


def test_a_copy_given_its_message_date_and_written_again_stays_one(empty_dovecot, fs, tmp_path):
    """cp of a message that is there already stands for that message; touch
    -d with its own date changes nothing; a second cp of the same bytes
    then stored a second copy: its date was compared with none (the first
    cp sent no date), so the message it stood for was left out of the
    search for an identical one (an exploratory test; shutil.copy2 and a
    second restic restore, which set the time after the close, did the
    same)."""
    dv = empty_dovecot()
    c = dv.imap()
    when = 1704103200  # 2024-01-01 10:00 UTC
    data = make_msg(new_tag("own"), lf=False)
    imap_append(c, "INBOX", data, date=when)
    src = tmp_path / "m.eml"
    src.write_bytes(data)
    os.utime(src, (when, when))
    m = fs(dv)
    copy = os.path.join(m, "INBOX", "copy.eml")
    subprocess.run(["cp", str(src), copy], check=True)
    assert len(state(c, "INBOX")) == 1
    os.utime(copy, (when, when))
    assert len(state(c, "INBOX")) == 1
    subprocess.run(["cp", str(src), copy], check=True)
    assert len(state(c, "INBOX")) == 1
    for _ in range(3):
        shutil.copy2(str(src), copy)
        got = state(c, "INBOX")
        assert [(v["body"], v["date"]) for v in got.values()] == [(data, when)]

def test_dedup_of_many_messages_of_one_size(empty_dovecot, fs, tmp_path):
    """Messages without a Message-ID, all of one size (generated alerts):
    the check compared only the 64 oldest of that size, one FETCH each, so
    a second cp of 100 such files stored the last 36 again (an exploratory
    test: 336 duplicates of 400).  All candidates are compared now, newest
    first, fetched many to a command."""
    dv = empty_dovecot()
    c = dv.imap()
    src = tmp_path / "alerts"
    src.mkdir()
    for i in range(100):
        (src / ("a%03d.eml" % i)).write_bytes(
            b"From: a@b\r\nSubject: alert %04d\r\n\r\ndisk full on host%04d\r\n" % (i, i))
    m = fs(dv, "imap_debug")
    box = os.path.join(m, "Q")
    os.mkdir(box)
    files = sorted(str(p) for p in src.iterdir())
    subprocess.run(["cp"] + files + [box], check=True)
    assert len(state(c, "Q")) == 100
    before = len(re.findall(r"C: A\d+ UID FETCH", m.stderr_text()))
    again = tmp_path / "again"  # other names: not the files just written
    again.mkdir()
    for f in files:
        (again / ("b" + os.path.basename(f))).write_bytes(open(f, "rb").read())
    subprocess.run(["cp"] + sorted(str(p) for p in again.iterdir()) + [box], check=True)
    st = state(c, "Q")
    assert len(st) == 100
    assert sorted(v["body"] for v in st.values()) == sorted(
        open(f, "rb").read() for f in files)
    fetches = len(re.findall(r"C: A\d+ UID FETCH", m.stderr_text())) - before
    assert fetches <= 4 * len(files), fetches  # was up to 64 a file (4420 here)


def test_create_in_a_folder_deleted_elsewhere_is_enoent(empty_dovecot, fs):
    """A process whose directory another client deleted (tar -x with -C
    there) got EPERM for every file it made, though readdir of the same
    directory gave ENOENT (an exploratory test)."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Gone")
    m = fs(dv, "poll=1")
    d = os.path.join(m, "Gone")
    assert os.listdir(d) == []
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert c.delete("Gone")[0] == "OK"
        wait_for(lambda: "Gone" not in os.listdir(m), what="Gone gone")
        with pytest.raises(OSError) as e:
            os.open("x.eml", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd)
        assert e.value.errno == errno.ENOENT
    finally:
        os.close(fd)


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
@pytest.mark.parametrize("dedup", ["on", "off"])
def test_close_in_a_folder_deleted_elsewhere_is_enoent(empty_dovecot, fs, xdg, dedup):
    """A file being written when another client deletes its folder: the
    close fails with ENOENT, and the bytes are kept.  With dedup=on the
    check's SELECT got Dovecot's plain NO (no [NONEXISTENT]) and the close
    gave EIO, while dedup=off's APPEND got [TRYCREATE] and ENOENT."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Gone")
    m = fs(dv, "dedup=" + dedup)
    data = make_msg("orphan")
    f = open(os.path.join(m, "Gone", "orphan.eml"), "wb")
    f.write(data)
    assert c.delete("Gone")[0] == "OK"
    expect_errno(errno.ENOENT, f.close)
    assert "Gone" not in corpus.list_mailboxes(c)
    kept = [p for p in unsent_files(xdg) if os.path.isfile(p)]
    assert len(kept) == 1 and open(kept[0], "rb").read() == data


def test_rsync_temp_name_pattern(empty_dovecot, fs):
    """rsync writes .NAME.XXXXXX, closes, sets the mtime, renames: one
    APPEND, at the rename, with that mtime as INTERNALDATE."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    tmp = os.path.join(inbox, ".r.eml.Ab12Cd")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, make_msg("rs"))
    os.close(fd)
    assert state(c, "INBOX") == {}  # not yet: waiting for the rename
    os.utime(tmp, (1300000000, 1300000000))
    os.chmod(tmp, 0o644)
    os.rename(tmp, os.path.join(inbox, "r.eml"))
    st = state(c, "INBOX")
    assert len(st) == 1
    (uid, msg), = st.items()
    assert msg["date"] == 1300000000
    assert os.listdir(inbox) == [eml(uid)]
    assert not os.path.exists(tmp)


@pytest.mark.slow
@pytest.mark.imapfuse_stderr_ok(r"mv over \S+ refused: the new file is not stored")
def test_rename_over_a_message_replaces_it(empty_dovecot, fs):
    """sed -i writes a temporary file and renames it over the message it
    edits: the edited bytes replace that message (stored first, then the
    old one removed). rsync's temporary names never replace: a source's
    5.eml is not the folder's message 5. A file not stored yet (empty)
    cannot replace one."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    old = imap_append(c, "INBOX", crlf(make_msg("sed")))
    r = subprocess.run(["sed", "-i", "s/This is sed./This is edited./",
                        os.path.join(inbox, eml(old))],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    st = state(c, "INBOX")
    assert old not in st and len(st) == 1
    (new, msg), = st.items()
    assert b"This is edited." in msg["body"] and b"This is sed." not in msg["body"]
    # rsync's temporary name over an existing message's name: both stay.
    tmp = os.path.join(inbox, ".%s.Xy12Zw" % eml(new))
    write_file(tmp, make_msg("other"))
    os.rename(tmp, os.path.join(inbox, eml(new)))
    assert sorted(mids(c, "INBOX")) == ["other@imapfuse.test", "sed@imapfuse.test"]
    # An empty file is not a message: it replaces nothing.
    keep = imap_append(c, "INBOX", crlf(make_msg("keep")))
    empty = os.path.join(inbox, "empty")
    open(empty, "wb").close()
    expect_errno(errno.EPERM, os.rename, empty, os.path.join(inbox, eml(keep)))
    assert keep in state(c, "INBOX")


def test_editing_a_message_keeps_its_flags(empty_dovecot, fs):
    """sed -i (a new file renamed over the message) gives the new version
    the flags of the one it replaces (they were lost), unless the file
    had flags of its own set before it was stored."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    old = imap_append(c, "INBOX", crlf(make_msg("ed")), flags=r"(\Seen \Flagged $Work)")
    r = subprocess.run(["sed", "-i", "s/This is ed./This is edited./",
                        os.path.join(inbox, eml(old))],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    st = state(c, "INBOX")
    (new, msg), = st.items()
    assert new != old and b"This is edited." in msg["body"]
    assert msg["flags"] == {"\\Seen", "\\Flagged", "$Work"}
    # The name sed wrote stands for the new version for a while; its flags.
    assert set(os.getxattr(os.path.join(inbox, eml(old)), "user.imap.flags").split()) == {
        b"\\Seen", b"\\Flagged", b"$Work"}
    # Flags set on the new file before it was stored are its own (here it
    # replaces the file sed wrote, whose name is still there).
    tmp = os.path.join(inbox, "edit.tmp")
    with open(tmp, "wb") as f:
        f.write(crlf(make_msg("ed2")))
        os.setxattr(f.fileno(), "user.imap.flags", b"\\Answered")
    os.rename(tmp, os.path.join(inbox, eml(old)))
    (newer, msg), = state(c, "INBOX").items()
    assert newer != new and msg["mid"] == "ed2@imapfuse.test"
    assert msg["flags"] == {"\\Answered"}
    # And an edit of that file keeps them.
    r = subprocess.run(["sed", "-i", "s/This is ed2./This is ed3./",
                        os.path.join(inbox, eml(old))],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    (newest, msg), = state(c, "INBOX").items()
    assert newest != newer and b"This is ed3." in msg["body"]
    assert msg["flags"] == {"\\Answered"}
    # A new date for the edited name within its 30 s sends it again: with
    # the flags it has.
    os.utime(os.path.join(inbox, eml(old)), (1600000000, 1600000000))
    (dated, msg), = state(c, "INBOX").items()
    assert dated != newest and msg["date"] == 1600000000
    assert msg["flags"] == {"\\Answered"}
    # Flags set on a file after it was stored (shutil.copy2 copies xattrs
    # after the close) are its own too.
    other = imap_append(c, "INBOX", crlf(make_msg("ed4")), flags=r"(\Seen)")
    tmp = os.path.join(inbox, "edit2.tmp")
    write_file(tmp, crlf(make_msg("ed5")))
    os.setxattr(tmp, "user.imap.flags", b"\\Flagged")
    os.rename(tmp, os.path.join(inbox, eml(other)))
    st = state(c, "INBOX")
    assert other not in st
    assert {v["mid"]: v["flags"] for v in st.values()}["ed5@imapfuse.test"] == {"\\Flagged"}


def test_mv_of_a_new_file_over_one_in_another_folder_keeps_its_flags(empty_dovecot, fs):
    """A written file moved over another written file's name in another
    folder is a move, not an edit: its message keeps its own flags."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("A")
    c.create("B")
    m = fs(dv)
    x, y = os.path.join(m, "A", "x.eml"), os.path.join(m, "B", "y.eml")
    write_file(x, crlf(make_msg("mx")))
    write_file(y, crlf(make_msg("my")))
    os.setxattr(x, "user.imap.flags", b"\\Answered")
    os.setxattr(y, "user.imap.flags", b"\\Flagged")
    os.rename(x, y)
    assert state(c, "A") == {}
    (uid, msg), = state(c, "B").items()
    assert msg["mid"] == "mx@imapfuse.test" and msg["flags"] == {"\\Answered"}


def test_restoring_files_named_like_uids(empty_dovecot, fs, tmp_path):
    """A backup of a folder holds files named <UID>.eml. Restored into an
    empty folder, 10.eml becomes UID 1 while the name "10.eml" lingers;
    tar then creates 1.eml, finds it taken (EEXIST) and unlinks it, and
    mv overwrites it. Like unlink(2) of one of two links, that removes the
    name 1.eml only: every file arrives exactly once (tar and mv used to
    expunge the message 10.eml had just become)."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    src = tmp_path / "bk"
    src.mkdir()
    names = ["10.eml", "1.eml", "2.eml", "3.eml"]
    for n in names:
        (src / n).write_bytes(make_msg("r" + n.split(".")[0]))
    tar = tmp_path / "bk.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(src)] + names, check=True)
    os.mkdir(os.path.join(m, "R"))
    r = subprocess.run(["tar", "xf", str(tar), "-C", os.path.join(m, "R")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(mids(c, "R")) == sorted(
        "r%s@imapfuse.test" % n.split(".")[0] for n in names)
    # While the names written linger, ls shows exactly them, each with the
    # bytes written (no message twice, none missing).
    assert sorted(os.listdir(os.path.join(m, "R"))) == sorted(names)
    for n in names:
        with open(os.path.join(m, "R", n), "rb") as fh:
            assert fh.read() == (src / n).read_bytes(), n
    # cp in the order of a sorted glob (cp fails with EPERM on a message
    # it finds under a name: 2.eml was taken by what 10.eml became).
    os.mkdir(os.path.join(m, "C"))
    r = subprocess.run(["cp"] + [str(src / n) for n in sorted(names)]
                       + [os.path.join(m, "C") + "/"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(mids(c, "C")) == sorted(mids(c, "R"))
    # mv from a local disk: rename fails (EXDEV), mv removes the
    # destination it finds and copies.
    os.mkdir(os.path.join(m, "M"))
    for n in names:
        r = subprocess.run(["mv", str(src / n), os.path.join(m, "M") + "/"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert sorted(mids(c, "M")) == sorted(mids(c, "R"))
    # Every name ls shows can be looked up; a message no new file names
    # is still removed by rm.
    for n in os.listdir(os.path.join(m, "M")):
        os.stat(os.path.join(m, "M", n))
    # mv of a file just written as 3.eml into a folder that has a message
    # 3: UID names are per folder, that message is not touched.
    os.mkdir(os.path.join(m, "Y"))
    ys = [imap_append(c, "Y", crlf(make_msg("y%d" % i))) for i in range(4)]
    os.mkdir(os.path.join(m, "Z"))
    write_file(os.path.join(m, "Z", eml(ys[2])), make_msg("moved"))
    os.rename(os.path.join(m, "Z", eml(ys[2])), os.path.join(m, "Y", eml(ys[2])))
    assert sorted(mids(c, "Y")) == sorted(
        ["moved@imapfuse.test"] + ["y%d@imapfuse.test" % i for i in range(4)])
    other = imap_append(c, "M", crlf(make_msg("plain")))
    os.unlink(os.path.join(m, "M", eml(other)))
    assert other not in state(c, "M")


def test_second_names_of_a_message(empty_dovecot, fs):
    """A message whose new file has a name like another UID ("10.eml" that
    became UID 1) has two names: renaming a file over the other name (a
    restore's atomic rename into place) takes over that name only; ls
    shows both names, and rm of both (in either order) removes the
    message; the same for a copy (dedup) under such a name; sed -i on a
    file written a moment ago replaces the message it became."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    r = os.path.join(m, "R")
    os.mkdir(r)
    write_file(os.path.join(r, "tmpA"), make_msg("A"))
    os.rename(os.path.join(r, "tmpA"), os.path.join(r, "10.eml"))
    write_file(os.path.join(r, "tmpB"), make_msg("B"))
    os.rename(os.path.join(r, "tmpB"), os.path.join(r, eml(uid_of(c, "R", "A"))))
    assert sorted(mids(c, "R")) == ["A@imapfuse.test", "B@imapfuse.test"]
    # rm of every name ls shows removes the messages.
    f = os.path.join(m, "F")
    os.mkdir(f)
    write_file(os.path.join(f, "10.eml"), make_msg("C"))
    names = os.listdir(f)
    assert names == ["10.eml"]  # its message's own name waits until it goes
    expect_errno(errno.ENOENT, os.stat, os.path.join(f, eml(uid_of(c, "F", "C"))))
    for n in names:
        os.unlink(os.path.join(f, n))
    assert mids(c, "F") == []
    assert os.listdir(f) == []
    # A copy (nothing appended) under a UID-like name is listed besides the
    # message; rm of the message gives the copy its own, rm of both
    # removes the mail, mv of the copy moves it.
    inbox = os.path.join(m, "INBOX")
    u = imap_append(c, "INBOX", crlf(make_msg("D")))
    with open(os.path.join(inbox, eml(u)), "rb") as fh:
        write_file(os.path.join(inbox, "%d.eml" % (u + 10)), fh.read())
    assert list(state(c, "INBOX")) == [u]
    assert sorted(os.listdir(inbox)) == sorted([eml(u), "%d.eml" % (u + 10)])
    os.unlink(os.path.join(inbox, eml(u)))
    assert mids(c, "INBOX") == ["D@imapfuse.test"]
    os.mkdir(os.path.join(m, "Other"))
    os.rename(os.path.join(inbox, "%d.eml" % (u + 10)), os.path.join(m, "Other", "x.eml"))
    assert mids(c, "Other") == ["D@imapfuse.test"] and mids(c, "INBOX") == []
    # sed -i on N.eml of a file written a moment ago under another name.
    write_file(os.path.join(inbox, "draft"), make_msg("draft"))
    d = uid_of(c, "INBOX", "draft")
    out = subprocess.run(["sed", "-i", "s/This is draft./This is redrafted./",
                          os.path.join(inbox, eml(d))],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert [b"This is redrafted." in v["body"] for v in state(c, "INBOX").values()] == [True]
    # Its message was replaced (expunged): the name went with it.
    expect_errno(errno.ENOENT, os.stat, os.path.join(inbox, "draft"))
    # sed -i on a file written a moment ago.
    for n in os.listdir(inbox):
        os.unlink(os.path.join(inbox, n))
    write_file(os.path.join(inbox, "x.eml"), make_msg("sed"))
    out = subprocess.run(["sed", "-i", "s/This is sed./This is edited./",
                          os.path.join(inbox, "x.eml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    st = state(c, "INBOX")
    assert [b"This is edited." in v["body"] for v in st.values()] == [True]


def test_folder_recreated_elsewhere_stays_writable(empty_dovecot, fs):
    """Another client deletes and recreates a folder this mount has just
    written into: Dovecot's session that had it selected answers every
    later command there with NO [SERVERBUG] (Internal error), so every
    write into it failed (bytes to the unsent directory) until the mount
    was restarted. That session is dropped and the write goes again on a
    fresh one."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("F")
    m = fs(dv)
    f = os.path.join(m, "F")
    write_file(os.path.join(f, "a.eml"), make_msg("a"))
    c.delete("F")
    c.create("F")
    imap_append(c, "F", crlf(make_msg("other")))
    for i in range(3):
        write_file(os.path.join(f, "b%d.eml" % i), make_msg("b%d" % i))
    # A session of its own: the one that deleted and created F can get
    # [SERVERBUG] for it from then on (Dovecot 2.3.19: "duplicate
    # transaction log sequence", its index changed under it).
    c.logout()
    c = dv.imap()
    assert sorted(mids(c, "F")) == ["b0@imapfuse.test", "b1@imapfuse.test",
                                    "b2@imapfuse.test", "other@imapfuse.test"]


def test_temp_name_never_renamed_is_sent(empty_dovecot, fs):
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    write_file(os.path.join(m, "INBOX", ".lonely.eml.ZZ99zz"), make_msg("lonely"))
    assert state(c, "INBOX") == {}
    wait_for(lambda: state(c, "INBOX"), timeout=45, what="lingering send")
    assert mids(c, "INBOX") == ["lonely@imapfuse.test"]


def _rsync(*args):
    r = subprocess.run(["rsync", "-a", "-i"] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    return [l for l in r.stdout.splitlines() if l.strip()]


def test_rsync_in_and_out_twice(empty_dovecot, fs, tmp_path):
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Backup")
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for i in range(25):
        data = make_msg("rs%02d" % i, lf=(i % 2 == 0), size=200 * i)
        when = 1500000000 + i * 86400
        name = "mail %02d 'q' \"%%\".eml" % i
        write_file(src / name, data, mtime=when)
        files[name] = (data, when)
    os.chmod(src, 0o755)

    m = fs(dv)
    box = os.path.join(m, "Backup")
    _rsync(str(src) + "/", box + "/")
    st = state(c, "Backup")
    assert len(st) == 25
    by_mid = {x["mid"]: x for x in st.values()}
    for name, (data, when) in files.items():
        mid = re.search(rb"Message-ID: <([^>]*)>", data).group(1).decode()
        assert by_mid[mid]["body"] == crlf(data)
        assert by_mid[mid]["date"] == when
    m.unmount()

    # Second run on a fresh mount (the names on the mount are UIDs, so
    # rsync sends everything again): nothing new on the server.
    m = fs(dv)
    box = os.path.join(m, "Backup")
    _rsync(str(src) + "/", box + "/")
    assert sorted(state(c, "Backup")) == sorted(st)

    # Back out, twice: same count, same bytes (CRLF), nothing the 2nd time.
    out = tmp_path / "out"
    _rsync(box + "/", str(out) + "/")
    got = sorted(os.listdir(out))
    assert got == sorted(eml(u) for u in st)
    for u, x in st.items():
        assert (out / eml(u)).read_bytes() == x["body"]
        assert os.stat(out / eml(u)).st_mtime == x["date"]
    assert _rsync(box + "/", str(out) + "/") == []
    assert sorted(state(c, "Backup")) == sorted(st)


def test_rsync_aX_lists_flags_only_where_a_message_has_some(empty_dovecot, fs, tmp_path):
    """rsync -aX between the mount and a copy without extended attributes
    (made by rsync -a, tar without --xattrs) changes nothing for messages
    with no flags: an empty user.imap.flags is not listed, so rsync sees
    none on either side.  Flags that are there go out and back unchanged."""
    dv = empty_dovecot()
    c = dv.imap()
    plain = [imap_append(c, "INBOX", make_msg("plain%d" % i)) for i in range(3)]
    flagged = imap_append(c, "INBOX", make_msg("flagged"), flags=r"(\Flagged $Work)")
    m = fs(dv)
    box = os.path.join(m, "INBOX")
    assert os.listxattr(os.path.join(box, eml(plain[0]))) == []
    assert os.getxattr(os.path.join(box, eml(plain[0])), "user.imap.flags") == b""
    assert os.listxattr(os.path.join(box, eml(flagged))) == ["user.imap.flags"]
    bare = tmp_path / "bare"
    _rsync(box + "/", str(bare) + "/")  # no -X
    os.unlink(bare / eml(flagged))  # -O: this moves bare's own time
    assert _rsync("-XO", str(bare) + "/", box + "/") == []
    assert _rsync("-XO", box + "/", str(bare) + "/") == [">f+++++++++ " + eml(flagged)]
    assert os.getxattr(bare / eml(flagged), "user.imap.flags") == b"\\Flagged $Work"
    assert _rsync("-XO", str(bare) + "/", box + "/") == []
    assert _rsync("-XO", box + "/", str(bare) + "/") == []
    st = state(c, "INBOX")
    assert sorted(st) == sorted(plain + [flagged])
    assert st[flagged]["flags"] == {"\\Flagged", "$Work"}
    assert all(st[u]["flags"] == set() for u in plain)


def test_cp_a_into_mount(empty_dovecot, fs, tmp_path):
    """cp -a of a directory tree: mkdir, files, modes and times."""
    dv = empty_dovecot()
    c = dv.imap()
    tree = tmp_path / "Tree"
    (tree / "Sub").mkdir(parents=True)
    write_file(tree / "a.eml", make_msg("ta"), mtime=1234567890)
    write_file(tree / "Sub" / "b.eml", make_msg("tb"), mtime=1234567891)
    m = fs(dv)
    subprocess.run(["cp", "-a", str(tree), str(m) + "/"], check=True)
    assert {"Tree", "Tree/Sub"} <= mailboxes(c)
    ta, tb = state(c, "Tree"), state(c, "Tree/Sub")
    assert [x["date"] for x in ta.values()] == [1234567890]
    assert [x["date"] for x in tb.values()] == [1234567891]


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_append_over_quota_keeps_bytes(empty_dovecot, fs, xdg):
    dv = empty_dovecot(extra_config=QUOTA_CONFIG(storage="64K"))
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    data = make_msg("big", size=200 * 1024)
    f = open(os.path.join(inbox, "too big.eml"), "wb")
    f.write(data)
    expect_errno(errno.EDQUOT, f.close)
    assert state(c, "INBOX") == {}
    kept = unsent_files(xdg)
    kept = [p for p in kept if os.path.isfile(p)]
    assert len(kept) == 1, kept
    assert kept[0].endswith("-too big.eml")
    assert os.path.basename(os.path.dirname(kept[0])) == "INBOX"
    assert open(kept[0], "rb").read() == data  # the bytes as written
    assert os.listdir(inbox) == []
    # fsync reports it too.
    fd = os.open(os.path.join(inbox, "also big.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, data)
    expect_errno(errno.EDQUOT, os.fsync, fd)
    with pytest.raises(OSError):
        os.close(fd)
    assert len([p for p in unsent_files(xdg) if os.path.isfile(p)]) == 2
    # A message that fits still goes in.
    write_file(os.path.join(inbox, "small.eml"), make_msg("small"))
    assert mids(c, "INBOX") == ["small@imapfuse.test"]
    m.unmount()
    err = m.stderr_text()
    assert kept[0] in err


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_rm_after_a_refused_new_version_removes_the_message(empty_dovecot, fs, xdg):
    """A file became a message; a new version of it (cp -p sets the date
    after the close) was refused (quota: it is appended before the old
    one goes) and kept in the unsent directory. rm of its name still
    removes the message it is (it used to return 0 and leave it)."""
    dv = empty_dovecot(extra_config=QUOTA_CONFIG(storage="64K"))
    c = dv.imap()
    m = fs(dv)
    p = os.path.join(m, "INBOX", "grows.eml")
    write_file(p, make_msg("grows", size=40 * 1024))
    assert mids(c, "INBOX") == ["grows@imapfuse.test"]
    expect_errno(errno.EDQUOT, os.utime, p, (1400000000, 1400000000))
    assert mids(c, "INBOX") == ["grows@imapfuse.test"]
    os.unlink(p)
    assert state(c, "INBOX") == {}
    assert len([k for k in unsent_files(xdg) if os.path.isfile(k)]) == 1


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_refused_append_reported_when_two_writers_close(empty_dovecot, fs, xdg):
    """Two descriptors write one new file and both are closed before the
    kernel releases either (here the first stays mapped: its release
    waits for the munmap). The second close() is the last flush and
    must report the refused APPEND; counting releases sent it only at
    the release, where the error reaches nobody."""
    dv = empty_dovecot(extra_config=QUOTA_CONFIG(storage="64K"))
    c = dv.imap()
    m = fs(dv)
    p = os.path.join(m, "INBOX", "two writers.eml")
    data = make_msg("two", size=100 * 1024)
    fd1 = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd1, data[:1000])
    mm = mmap.mmap(fd1, 1000, access=mmap.ACCESS_READ)
    try:
        fd2 = os.open(p, os.O_RDWR)
        os.pwrite(fd2, data[1000:], 1000)
        os.close(fd1)  # another writer is open: not sent yet
        expect_errno(errno.EDQUOT, os.close, fd2)
    finally:
        mm.close()
    assert state(c, "INBOX") == {}
    kept = [k for k in unsent_files(xdg) if os.path.isfile(k)]
    assert len(kept) == 1 and open(kept[0], "rb").read() == data


def test_warnings_go_to_syslog_in_the_background(empty_dovecot, imapfuse_bin,
                                                 xdg, tmp_path):
    """Without -f, imapfuse's stderr is /dev/null once it has daemonised:
    the warning that says where a refused message's bytes were kept goes
    to syslog (here a socket of the test's own at /dev/log)."""
    if os.path.exists("/dev/log"):
        pytest.skip("/dev/log belongs to a running syslog daemon")
    dv = empty_dovecot(extra_config=QUOTA_CONFIG(storage="64K"))
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        log.bind("/dev/log")
        log.settimeout(10)
        argv = conftest._build_argv(imapfuse_bin, dv, (), "off", "imap", None,
                                    None, dv.write_password_file(), str(mp),
                                    (), None)
        argv.remove("-f")
        env = conftest._sanitizer_env(dict(os.environ, **xdg))
        subprocess.run(argv, check=True, timeout=30, env=env,
                       stdin=subprocess.DEVNULL, start_new_session=True)
        assert conftest.is_mounted(str(mp))
        f = open(mp / "INBOX" / "big.eml", "wb")
        f.write(make_msg("big", size=100 * 1024))
        expect_errno(errno.EDQUOT, f.close)
        lines = []
        while not any("could not store" in l for l in lines):
            lines.append(log.recv(65536).decode("utf-8", "replace"))
        line = [l for l in lines if "could not store" in l][0]
        assert "imapfuse[" in line and "its bytes are kept in" in line, line
        kept = [k for k in unsent_files(xdg) if os.path.isfile(k)]
        assert len(kept) == 1 and kept[0] in line
    finally:
        if conftest.is_mounted(str(mp)):
            subprocess.run(["fusermount3", "-u", str(mp)], timeout=30)
        log.close()
        if os.path.exists("/dev/log"):
            os.unlink("/dev/log")


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_rsync_rejected_reports_and_keeps_bytes(empty_dovecot, fs, xdg, tmp_path):
    """Under rsync's temporary name the APPEND happens at the rename: that
    is where rsync sees the error; the bytes are kept under the final name."""
    dv = empty_dovecot(extra_config=QUOTA_CONFIG(storage="64K"))
    c = dv.imap()
    src = tmp_path / "src"
    src.mkdir()
    data = make_msg("rsbig", size=200 * 1024)
    write_file(src / "big one.eml", data, mtime=1500000000)
    write_file(src / "small.eml", make_msg("rssmall"), mtime=1500000000)
    m = fs(dv)
    r = subprocess.run(["rsync", "-a", str(src) + "/", os.path.join(m, "INBOX") + "/"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 23, r.stderr
    assert "big one.eml" in r.stderr
    assert mids(c, "INBOX") == ["rssmall@imapfuse.test"]
    kept = [p for p in unsent_files(xdg) if os.path.isfile(p)]
    assert len(kept) == 1 and kept[0].endswith("-big one.eml"), kept
    assert open(kept[0], "rb").read() == data


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_append_too_large_keeps_bytes(empty_dovecot, fs, xdg):
    dv = empty_dovecot(extra_config=[
        QUOTA_CONFIG(storage="100M"),
        "plugin {\n  quota_max_mail_size = 50k\n}\n"])
    c = dv.imap()
    m = fs(dv)
    data = make_msg("huge", size=100 * 1024)
    f = open(os.path.join(m, "INBOX", "huge.eml"), "wb")
    f.write(data)
    expect_errno(errno.EFBIG, f.close)  # NO [LIMIT]
    assert state(c, "INBOX") == {}
    kept = [p for p in unsent_files(xdg) if os.path.isfile(p)]
    assert len(kept) == 1 and open(kept[0], "rb").read() == data


def crlf_msg(tag, size):
    """A message of exactly `size` bytes with CRLF line ends (sent as is)."""
    data = make_msg(tag, lf=False, size=size)[:size]
    return data[:-2] + b"\r\n"


def too_big_lines(m):
    return [l for l in m.stderr_text().splitlines()
            if re.search(TOO_BIG_WARNING, l)]


@pytest.mark.imapfuse_stderr_ok(TOO_BIG_WARNING)
def test_max_message_refuses_at_once(empty_dovecot, fs, xdg):
    """-o max_message=64K: a truncate or write that would make a new file
    larger fails with EFBIG at once, with one warning per file; nothing of
    that file is sent, and what was written before is kept unsent.  A file
    of exactly the limit is stored."""
    limit = 64 * 1024
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "max_message=64K")
    inbox = os.path.join(m, "INBOX")
    # truncate past the limit (a sparse 50G file must not be read or sent)
    head = crlf_msg(new_tag("trunc"), 1000)
    p = os.path.join(inbox, "trunc.eml")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, head)
    expect_errno(errno.EFBIG, os.truncate, p, limit + 1)
    expect_errno(errno.EFBIG, os.ftruncate, fd, 50 << 30)
    expect_errno(errno.EFBIG, os.write, fd, b"more")
    expect_errno(errno.EFBIG, os.close, fd)
    # an empty new file truncated past it: nothing to keep
    p = os.path.join(inbox, "empty.eml")
    open(p, "wb").close()
    fd = os.open(p, os.O_WRONLY)
    expect_errno(errno.EFBIG, os.ftruncate, fd, limit + 1)
    expect_errno(errno.EFBIG, os.close, fd)
    # a write that crosses it (cp of something too large)
    first = crlf_msg(new_tag("write"), 60 * 1024)
    p = os.path.join(inbox, "write.eml")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    assert os.write(fd, first) == len(first)
    expect_errno(errno.EFBIG, os.write, fd, b"x" * 8192)
    expect_errno(errno.EFBIG, os.close, fd)
    # exactly the limit goes in
    ok = crlf_msg(new_tag("fits"), limit)
    write_file(os.path.join(inbox, "fits.eml"), ok)
    assert [x["body"] for x in state(c, "INBOX").values()] == [ok]
    kept = sorted(open(f, "rb").read() for f in unsent_files(xdg) if os.path.isfile(f))
    assert kept == sorted([head, first])
    lines = too_big_lines(m)
    assert len(lines) == 3, lines
    assert all("(max_message=)" in l for l in lines), lines


@pytest.mark.imapfuse_stderr_ok(TOO_BIG_WARNING)
def test_max_message_counts_the_crlf_conversion(empty_dovecot, fs, xdg):
    """The limit is on the message as sent: a file at the limit whose bare
    LFs make it longer is refused at close (EFBIG), kept, not sent."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "max_message=8K")
    data = make_msg(new_tag("lf"), size=8192)[:8192]
    fd = os.open(os.path.join(m, "INBOX", "lf.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    assert os.write(fd, data) == len(data)
    expect_errno(errno.EFBIG, os.close, fd)
    assert state(c, "INBOX") == {}
    kept = sorted(open(f, "rb").read() for f in unsent_files(xdg) if os.path.isfile(f))
    assert kept == [data]
    assert len(too_big_lines(m)) == 1


@pytest.mark.imapfuse_stderr_ok(TOO_BIG_WARNING)
def test_appendlimit_from_the_server(empty_dovecot, fs, xdg):
    """CAPABILITY APPENDLIMIT=n (RFC 7889) is the limit; a larger
    max_message= does not raise it."""
    limit = 70000
    dv = empty_dovecot(extra_config=capability_without().rstrip("\n")
                       + " APPENDLIMIT=%d\n" % limit)
    c = dv.imap()
    m = fs(dv, "max_message=1G")
    inbox = os.path.join(m, "INBOX")
    p = os.path.join(inbox, "big.eml")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    expect_errno(errno.EFBIG, os.ftruncate, fd, limit + 1)
    expect_errno(errno.EFBIG, os.close, fd)  # the close reports it too
    ok = crlf_msg(new_tag("fits"), limit)
    write_file(os.path.join(inbox, "fits.eml"), ok)
    assert [x["body"] for x in state(c, "INBOX").values()] == [ok]
    lines = too_big_lines(m)
    assert len(lines) == 1 and "APPENDLIMIT" in lines[0], lines


def kept_files(xdg):
    return sorted(p for p in unsent_files(xdg) if os.path.isfile(p))


@pytest.mark.imapfuse_stderr_ok(r"No space left on device")
def test_full_staging_disk_stores_nothing(empty_dovecot, fs, xdg, tmp_path):
    """A write the staging disk has no room for: what is staged is not the
    writer's whole file, so it is never sent (cp of 8 MB onto a 5 MB
    staging disk stored the first 5 MB as a message).  The write and the
    close fail with ENOSPC, and the bytes staged are kept unsent."""
    with small_tmpfs(os.path.join(xdg["XDG_DATA_HOME"], "imapfuse", "staging"), "5m"):
        dv = empty_dovecot()
        c = dv.imap()
        m = fs(dv)
        src = tmp_path / "8m.eml"
        data = make_msg(new_tag("full"), lf=False, size=8_000_000)[:8_000_000]
        src.write_bytes(data)
        r = subprocess.run(["cp", str(src), os.path.join(m, "INBOX", "full.eml")],
                           capture_output=True, text=True)
        assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
        assert state(c, "INBOX") == {}
        kept = kept_files(xdg)
        assert len(kept) == 1 and kept[0].endswith("-full.eml"), kept
        body = open(kept[0], "rb").read()
        assert 0 < len(body) < len(data) and data.startswith(body)
        assert os.listdir(os.path.join(m, "INBOX")) == []
        m.unmount()
        assert re.search(r'could not store "full.eml" in INBOX .*No space left on device.*'
                         r"its bytes are kept in", m.stderr_text()), m.stderr_text()


def _kill_writer(path, data, sig):
    """cp /dev/stdin PATH, fed data, then killed by sig while it waits
    for more."""
    p = subprocess.Popen(["cp", "/dev/stdin", path], stdin=subprocess.PIPE)
    p.stdin.write(data)
    p.stdin.flush()
    wait_for(lambda: os.path.exists(path) and os.stat(path).st_size == len(data),
             what="cp to write it all")
    p.send_signal(sig)
    assert p.wait(10) == -sig
    p.stdin.close()


@pytest.mark.imapfuse_stderr_ok(r"could not store .* was killed by signal")
def test_writer_killed_by_a_signal_is_not_stored(empty_dovecot, fs, xdg, tmp_path):
    """A writer killed by a signal closes its files as it dies: the
    kernel's flush comes from that process.  What it wrote may be only
    part of the file, so it is not stored (cp killed with ^C stored the
    part it had as a message): kept unsent, with a warning.  A writer
    that exits normally without closing (also one with threads, whose
    other threads the kernel ends with SIGKILL) is stored.  A message an
    fsync() stored stays; what was written after it is kept unsent."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    part = make_msg(new_tag("intr"), lf=False, size=2_000_000)
    _kill_writer(os.path.join(inbox, "intr.eml"), part, signal.SIGINT)
    _kill_writer(os.path.join(inbox, "kill.eml"), part, signal.SIGKILL)
    # Kept at the release, which the kernel sends after the dying close.
    wait_for(lambda: len(kept_files(xdg)) == 2, what="both kept")
    assert state(c, "INBOX") == {}
    kept = kept_files(xdg)
    assert [os.path.basename(k)[17:] for k in kept] in (
        ["intr.eml", "kill.eml"], ["kill.eml", "intr.eml"]), kept
    assert all(open(k, "rb").read() == part for k in kept)
    lines = [l for l in m.stderr_text().splitlines() if "killed by signal" in l]
    assert len(lines) == 2 and '"intr.eml" in INBOX' in lines[0], lines
    assert "SIGINT" in lines[0] and "SIGKILL" in lines[1], lines
    assert os.listdir(inbox) == []

    # Normal exits without a close: stored.
    cat = make_msg(new_tag("cat"))
    subprocess.run("cat > " + shlex.quote(os.path.join(inbox, "cat.eml")), shell=True,
                   input=cat, check=True)
    thr = make_msg(new_tag("thr"), lf=False)
    code = ("import os, sys, threading, time\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "os.write(fd, sys.stdin.buffer.read())\n"
            "for _ in range(8):\n"
            "    threading.Thread(target=time.sleep, args=(1,)).start()\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, os.path.join(inbox, "thr.eml")],
                   input=thr, check=True)
    wait_for(lambda: len(state(c, "INBOX")) == 2, what="two stored")
    assert sorted(x["body"] for x in state(c, "INBOX").values()) == sorted([crlf(cat), thr])

    # fsync()ed, then more written, then killed: the stored version stays.
    first = make_msg(new_tag("synced"), lf=False)
    code = ("import os, signal, sys\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "os.write(fd, sys.argv[2].encode())\n"
            "os.fsync(fd)\n"
            "os.write(fd, b'more')\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, os.path.join(inbox, "synced.eml"),
                        first.decode()])
    assert r.returncode == -signal.SIGKILL
    bodies = sorted(x["body"] for x in state(c, "INBOX").values())
    assert bodies == sorted([crlf(cat), thr, first])
    kept = kept_files(xdg)
    assert len(kept) == 3 and first + b"more" in [open(k, "rb").read() for k in kept]
    m.unmount()


@pytest.mark.imapfuse_stderr_ok(r"were moved to", r"cannot move .* stays there",
                                r"could not store .*NUL", r"nor copy it")
def test_staged_bytes_that_cannot_be_moved_wait_for_the_next_mount(empty_dovecot, fs, xdg):
    """Bytes left in the staging directory (a mount killed mid-write; a
    refused file whose unsent copy could not be made) are moved to the
    unsent directory by the next mount that can.  A mount that could not
    make that directory (here a plain file stands where it goes) removed
    the run's lock file all the same, and every later mount skipped the
    run for good ("no lock: another mount is taking it"): the bytes
    stayed in staging with no further word."""
    dv = empty_dovecot()
    c = dv.imap()
    staging = os.path.join(xdg["XDG_DATA_HOME"], "imapfuse", "staging")
    unsent = os.path.join(xdg["XDG_DATA_HOME"], "imapfuse", "unsent")

    def blocked_then_free(first):
        acct = os.listdir(staging)[0]
        os.makedirs(unsent, exist_ok=True)
        blocker = os.path.join(unsent, acct)
        if not os.path.exists(blocker):
            open(blocker, "w").close()
        m2 = fs(dv)
        os.listdir(m2)
        m2.unmount(check=False)
        assert "stays there for the next mount" in m2.stderr_text()
        os.unlink(blocker)
        m3 = fs(dv)
        os.listdir(m3)
        m3.unmount()
        assert "were moved to" in m3.stderr_text()
        assert first in [open(k, "rb").read() for k in kept_files(xdg)]

    # A mount killed while a file was being written.
    m = fs(dv)
    data = make_msg(new_tag("killedrec"))
    fd = os.open(os.path.join(m, "INBOX", "k.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, data)
    m.proc.kill()
    m.proc.wait(10)
    m.finished = True
    with contextlib.suppress(OSError):
        os.close(fd)
    subprocess.run(["fusermount3", "-uz", m.path])
    blocked_then_free(data)

    # A refused file (a NUL byte) whose unsent copy could not be made.
    for k in kept_files(xdg):
        os.unlink(k)
    m = fs(dv)
    acct = os.listdir(staging)[0]
    open(os.path.join(unsent, acct + ".tmp"), "w").close()
    os.rename(os.path.join(unsent, acct), os.path.join(unsent, acct + ".old"))
    os.rename(os.path.join(unsent, acct + ".tmp"), os.path.join(unsent, acct))
    nul = make_msg(new_tag("leftnul")) + b"\0tail\n"
    fd = os.open(os.path.join(m, "INBOX", "nul.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, nul)
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL
    m.unmount(check=False)
    blocked_then_free(nul)
    assert state(c, "INBOX") == {}


@pytest.mark.imapfuse_stderr_ok(r"could not store .* was killed by signal")
def test_shell_group_redirect_is_stored_once_whole(empty_dovecot, fs, xdg):
    """`{ cmd1; sleep; cmd2; } > f`: the shell opens f once and each
    command closes its inherited copy as it exits.  Such a close is not
    the file's last: nothing is stored until the shell's own close, and
    then the whole file, once.  Each command's exit stored the part
    written so far, and a ^C during the sleep left that part on the
    server as if it were the file."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    head = make_msg(new_tag("grp")).decode()
    script = "{ /usr/bin/printf '%%s' \"$H\"; sleep 2; /usr/bin/printf 'tail\\n'; } > %s"
    sh = subprocess.Popen(["/bin/bash", "-c", script % os.path.join(m, "INBOX", "whole.eml")],
                          env=dict(os.environ, H=head))
    time.sleep(1)
    assert state(c, "INBOX") == {}
    assert sh.wait(20) == 0
    assert [x["body"] for x in state(c, "INBOX").values()] == [crlf(head.encode() + b"tail\n")]

    sh = subprocess.Popen(["/bin/bash", "-c", script % os.path.join(m, "INBOX", "cut.eml")],
                          env=dict(os.environ, H=head), start_new_session=True)
    time.sleep(1)
    os.killpg(sh.pid, signal.SIGINT)
    assert sh.wait(10) == -signal.SIGINT
    wait_for(lambda: kept_files(xdg) != [], what="the cut file kept unsent")
    assert [open(k, "rb").read() for k in kept_files(xdg)] == [head.encode()]
    assert len(state(c, "INBOX")) == 1
    m.unmount()


def test_new_version_survives_the_old_one_expunged_elsewhere(empty_dovecot, fs, xdg):
    """A file written, then opened again for writing within the name's
    30 s (an editor saving in place), while another client expunges the
    message it became: the name stays while a writer has it open, and its
    close stores the new version.  The name ended when the listing saw
    the expunge; close() returned 0 and the new version was neither
    stored nor kept."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "poll=1", "list_max_age=0")
    box = os.path.join(m, "INBOX")
    p = os.path.join(box, "a.eml")
    write_file(p, make_msg("v1"))
    assert mids(c, "INBOX") == ["v1@imapfuse.test"]
    v2 = make_msg("v2")
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, v2[:100])
        c.select("INBOX")
        c.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
        c.expunge()
        wait_for(lambda: "1.eml" not in os.listdir(box), timeout=10,
                 what="the listing to lose the expunged message")
        assert os.path.exists(p)
        os.write(fd, v2[100:])
    finally:
        os.close(fd)
    assert [x["body"] for x in state(c, "INBOX").values()] == [crlf(v2)]
    assert kept_files(xdg) == []
    m.unmount()


@pytest.mark.parametrize("ro", [False, True], ids=["rw", "ro"])
def test_fsync_of_a_message_read(empty_dovecot, fs, ro):
    """fsync() of a message opened for reading is legal (`sync FILE`,
    tools that fsync what they copy): it succeeds and changes nothing.
    The write path took the message's handle for a file being written:
    the worker hung for good on a read-write mount (and the unmount with
    it), and -o ro, where a message has no handle, crashed."""
    dv = empty_dovecot()
    c = dv.imap()
    msg = crlf(make_msg(new_tag("fsync")))
    imap_append(c, "INBOX", msg)
    m = fs(dv, *(["ro"] if ro else []))
    p = os.path.join(m, "INBOX", "1.eml")
    code = ("import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "sys.stdout.buffer.write(os.read(fd, 1 << 20))\n"
            "os.fsync(fd)\n"
            "os.fdatasync(fd)\n"
            "os.close(fd)\n")
    r = subprocess.run([sys.executable, "-c", code, p], capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout == msg
    assert m.proc.poll() is None
    assert subprocess.run(["sync", p], timeout=20).returncode == 0
    assert [x["body"] for x in state(c, "INBOX").values()] == [msg]
    m.unmount()


@pytest.mark.imapfuse_stderr_ok(r"could not store .* was killed by signal")
def test_killed_child_leaves_a_shared_file_to_its_parent(empty_dovecot, fs, xdg):
    """A child killed by a signal closes the file it shares with its
    parent (a script's `{ ...; } > f` whose command crashes): that close
    is not the file's last, so the file is not refused then (it was, and
    the parent's later writes and its close failed).  The last close
    decides: the parent's stores the whole file; when the killed child
    held the file last, it is kept unsent."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    whole = make_msg(new_tag("shared"), lf=False, size=300_000)
    head, tail = whole[:100_000], whole[100_000:]
    fd = os.open(os.path.join(inbox, "shared.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    pid = os.fork()
    if pid == 0:
        os.write(fd, head)
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert os.write(fd, tail) == len(tail)
    os.close(fd)
    assert [x["body"] for x in state(c, "INBOX").values()] == [whole]
    assert kept_files(xdg) == []

    # The parent closes first; the child is killed holding it: kept unsent.
    part = make_msg(new_tag("orphan"), lf=False, size=50_000)
    r, wr = os.pipe()
    fd = os.open(os.path.join(inbox, "orphan.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    pid = os.fork()
    if pid == 0:
        os.close(wr)
        os.read(r, 1)
        os.write(fd, part)
        os.kill(os.getpid(), signal.SIGKILL)
    os.close(r)
    os.close(fd)
    os.write(wr, b"x")
    os.close(wr)
    os.waitpid(pid, 0)
    wait_for(lambda: kept_files(xdg) != [], what="the file kept unsent")
    assert [open(k, "rb").read() for k in kept_files(xdg)] == [part]
    assert len(state(c, "INBOX")) == 1

    # The child is killed; the parent closes without writing more (a shell
    # that survived the ^C that killed its command): that close fails, and
    # the part is kept unsent (it was stored).
    half = make_msg(new_tag("half"), lf=False, size=50_000)
    fd = os.open(os.path.join(inbox, "half.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    pid = os.fork()
    if pid == 0:
        os.write(fd, half)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EIO
    assert sorted(open(k, "rb").read() for k in kept_files(xdg)) == sorted([part, half])
    assert len(state(c, "INBOX")) == 1
    lines = [l for l in m.stderr_text().splitlines() if "killed by signal" in l]
    assert len(lines) == 2 and '"orphan.eml"' in lines[0] and '"half.eml"' in lines[1], lines

    # A killed child that wrote none of it says nothing about the bytes:
    # the parent's file is stored whole (it was refused), also from a
    # shell whose group runs `timeout 0.5 sleep 5`.
    whole2 = make_msg(new_tag("idle"), lf=False, size=20_000)
    fd = os.open(os.path.join(inbox, "idle.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, whole2)
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    os.waitpid(pid, 0)
    os.close(fd)
    whole3 = make_msg(new_tag("tmo"), lf=False, size=20_000)
    subprocess.run(["/bin/bash", "-c", "{ cat; timeout 0.5 sleep 5; true; } > %s"
                    % shlex.quote(os.path.join(inbox, "tmo.eml"))], input=whole3, check=True)
    bodies = [x["body"] for x in state(c, "INBOX").values()]
    assert sorted(bodies[1:]) == sorted([whole2, whole3]), len(bodies)
    assert len(kept_files(xdg)) == 2
    m.unmount()


_SLOW_RESTORE = r"""
import os, sys, time
r, a, b, c = sys.argv[1:5]
for name, data in (("2.eml", a), ("1.eml", b)):  # A becomes UID 1, B UID 2
    with open(os.path.join(r, name), "wb") as f:
        f.write(data.encode())
# More data for 4 s, twice the linger, as a restore's later files.
with open(os.path.join(r, "7.eml"), "wb") as f:
    for i in range(14):
        f.write(b"X-Line: %d\r\n" % i if i else c.encode()[:40])
        f.flush()
        time.sleep(0.3)
    f.write(c.encode()[40:])
os.setxattr(os.path.join(r, "1.eml"), "user.imap.flags", b"\\Flagged")
"""


def test_a_slow_restore_keeps_its_names_until_it_ends(empty_dovecot, fs):
    """restic restores all the data first, then sets each file's times and
    flags by name.  A restore that took longer than the linger (30 s)
    found the names of its first files gone: N.eml then named the message
    with UID N, another restored message, whose flags it overwrote (an
    exploratory test with a throttled restic restore).  Names now linger
    while the process that wrote them goes on writing, and as long again
    (here -o linger=2)."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "linger=2")
    r = os.path.join(m, "R")
    os.mkdir(r)
    msgs = [make_msg(t).decode() for t in "ABC"]
    subprocess.run([sys.executable, "-c", _SLOW_RESTORE, r] + msgs, check=True)
    got = {v["mid"]: v["flags"] for v in state(c, "R").values()}
    assert got["B@imapfuse.test"] == {"\\Flagged"}, got
    assert got["A@imapfuse.test"] == set(), got
    # Once the restore is done the names go: the listing's are the UIDs.
    time.sleep(3)
    assert sorted(os.listdir(r)) == ["1.eml", "2.eml", "3.eml"]
    with open(os.path.join(r, "1.eml"), "rb") as f:
        assert b"A@imapfuse.test" in f.read()


def _restore_in_parts(path, data, parts, order, flags=None, mtime=None):
    """What restic 0.14's restore does with a large file: create it
    (O_TRUNC), fallocate its size, write the first part and close; then
    each further part, in the order its packs come, between an open and a
    close; at the end, the file's times and xattrs by name."""
    bounds = [len(data) * i // parts for i in range(parts + 1)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.posix_fallocate(fd, 0, len(data))
    os.pwrite(fd, data[:bounds[1]], 0)
    os.close(fd)
    for i in order:
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, data[bounds[i]:bounds[i + 1]], bounds[i])
        os.close(fd)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    if flags is not None:
        os.setxattr(path, "user.imap.flags", flags)


def test_a_file_written_in_parts_out_of_order_is_sent_whole(empty_dovecot, fs):
    """restic restores a large file a part at a time, out of order, each
    part between an open and a close, after a fallocate of its size.
    fallocate was not supported (restic goes on without), so the first
    close stored the first part as the message, and a later one, with a
    hole of NULs, was refused and gave the name up: a 30 MB message came
    back as its first 874 KB, and the rest failed with EPERM (an
    exploratory test with restic).  Now fallocate gives the file its size,
    and a close leaves a file with bytes never written unsent: the close
    that completes it sends it, once."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    r = os.path.join(m, "R")
    os.mkdir(r)
    data = make_msg(new_tag("parts"), lf=False, size=3 * 1024 * 1024)
    path = os.path.join(r, "1.eml")
    bounds = [len(data) * i // 6 for i in range(7)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.posix_fallocate(fd, 0, len(data))
    assert os.fstat(fd).st_size == len(data)
    os.pwrite(fd, data[:bounds[1]], 0)
    os.close(fd)
    assert state(c, "R") == {}  # not the first part as a message
    for i in (4, 2, 5, 1):
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, data[bounds[i]:bounds[i + 1]], bounds[i])
        os.close(fd)
        assert state(c, "R") == {}
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, data[bounds[3]:bounds[4]], bounds[3])
    os.close(fd)
    got = state(c, "R")
    assert [v["body"] for v in got.values()] == [data]
    # ... and its times and flags by name, as restic sets them at the end
    os.utime(path, (1600000000, 1600000000))
    os.setxattr(path, "user.imap.flags", b"\\Flagged")
    got = state(c, "R")
    assert [(v["body"], v["date"], v["flags"]) for v in got.values()] == \
        [(data, 1600000000, {"\\Flagged"})]
    # Several files at once, as restic's workers write them.
    msgs = [make_msg(new_tag("p%d" % k), lf=False, size=700 * 1024) for k in range(3)]
    threads = [threading.Thread(target=_restore_in_parts,
                                args=(os.path.join(r, "x%d.eml" % k), b, 5, [3, 1, 4, 2]))
               for k, b in enumerate(msgs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v["body"] for v in state(c, "R").values()) == sorted([data] + msgs)
    # Modes that punch holes or move bytes are not supported.
    fd = os.open(os.path.join(r, "x0.eml"), os.O_WRONLY)
    try:
        for mode in (0x02 | 0x01, 0x10, 0x08):  # PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE, COLLAPSE
            expect_errno(errno.EOPNOTSUPP, _fallocate, fd, mode, 0, 4096)
    finally:
        os.close(fd)


@pytest.mark.parametrize("temp", [False, True], ids=["plain", "rsync-temp"])
def test_an_incomplete_file_renamed_waits_for_its_bytes(empty_dovecot, fs, temp):
    """A file with bytes never written, renamed (rsync's temporary name into
    place, or any rename): the rename sent it, the send failed ("it is
    incomplete"), the rename failed with EINVAL and both names were gone
    (an adversarial test).  Now it is renamed, and sent once complete."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    r = os.path.join(m, "R")
    os.mkdir(r)
    data = make_msg(new_tag("ren"), lf=False, size=8000)
    half = len(data) // 2
    src = os.path.join(r, ".a.eml.Ab12Cd" if temp else "a-src.eml")
    dst = os.path.join(r, "a.eml")
    fd = os.open(src, os.O_WRONLY | os.O_CREAT, 0o600)
    os.pwrite(fd, data[half:], half)
    os.close(fd)
    os.rename(src, dst)
    assert state(c, "R") == {}
    fd = os.open(dst, os.O_WRONLY)
    os.pwrite(fd, data[:half], 0)
    os.close(fd)
    assert [v["body"] for v in state(c, "R").values()] == [data]


def test_a_truncate_that_lengthens_a_stored_file_waits_for_its_bytes(empty_dovecot, fs):
    """truncate(2) by name of a file already stored, to a larger size: the
    message was sent again at once, the send failed (bytes never written),
    truncate failed with EINVAL and the size had changed all the same (an
    adversarial test).  Now it succeeds, and the file is sent again once
    the bytes are there; the stored message stays until then."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    path = os.path.join(m, "INBOX", "t.eml")
    data = make_msg(new_tag("trunc"), lf=False)
    write_file(path, data)
    assert [v["body"] for v in state(c, "INBOX").values()] == [data]
    more = b"X-Extra: 1\r\n"
    longer = data + more
    os.truncate(path, len(longer))
    assert os.stat(path).st_size == len(longer)
    assert [v["body"] for v in state(c, "INBOX").values()] == [data]
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, more, len(data))
    os.close(fd)
    assert [v["body"] for v in state(c, "INBOX").values()] == [longer]

def _fallocate(fd, mode, off, length):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@pytest.mark.imapfuse_stderr_ok(r"could not store .*incomplete")
def test_a_file_left_with_bytes_never_written_is_kept_unsent(empty_dovecot, fs, xdg):
    """A file made longer than what was written (fallocate, truncate, a
    write past the end) and closed so is not sent: when its name lingers
    out with the hole still there it is kept unsent, with a warning that
    says it is incomplete (it was refused at the close for its NULs)."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "linger=1")
    r = os.path.join(m, "R")
    os.mkdir(r)
    data = make_msg(new_tag("cut"), lf=False, size=20000)
    cases = {"falloc.eml": lambda fd: (os.posix_fallocate(fd, 0, len(data)),
                                       os.pwrite(fd, data[:5000], 0)),
             "trunc.eml": lambda fd: (os.pwrite(fd, data[:5000], 0),
                                      os.ftruncate(fd, len(data))),
             "past.eml": lambda fd: os.pwrite(fd, data[5000:], 5000)}
    for name, how in cases.items():
        fd = os.open(os.path.join(r, name), os.O_WRONLY | os.O_CREAT, 0o600)
        how(fd)
        os.close(fd)  # no error: it may yet be completed
    # A keep-size fallocate changes nothing: this one is complete.
    whole = make_msg(new_tag("keep"), lf=False)
    fd = os.open(os.path.join(r, "keep.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    _fallocate(fd, 0x01, 0, 1 << 20)  # FALLOC_FL_KEEP_SIZE
    os.write(fd, whole)
    os.close(fd)
    assert [v["body"] for v in state(c, "R").values()] == [whole]
    deadline = time.monotonic() + 15
    while len(unsent_files(xdg)) < 6 and time.monotonic() < deadline:  # 3 dirs, 3 files
        time.sleep(0.2)
    kept = [p for p in unsent_files(xdg) if os.path.isfile(p)]
    assert sorted(os.path.basename(p).split("-", 1)[1] for p in kept) == \
        ["falloc.eml", "past.eml", "trunc.eml"], kept
    assert [v["body"] for v in state(c, "R").values()] == [whole]
    m.unmount()
    lines = [l for l in m.stderr_text().splitlines() if "could not store" in l]
    assert len(lines) == 3 and all("incomplete" in l for l in lines), lines

def test_names_of_an_ended_copy_go_while_another_writes(empty_dovecot, fs):
    """Names were held while anything was written on the mount: after an
    rsync into one folder, another rsync into a second folder kept the
    first one's names, and the messages whose UID names they stood for
    were missing from its listing (a tar of the mount missed 226 of 5,000;
    an exploratory test).  A name is held by its own writer's work only."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "linger=2")
    a = os.path.join(m, "A")
    os.mkdir(a)
    os.mkdir(os.path.join(m, "B"))
    # In a process that ends: 3.eml becomes UID 1, 2.eml UID 2, 1.eml UID 3.
    for name, tag in (("3.eml", "x"), ("2.eml", "y"), ("1.eml", "z")):
        subprocess.run(["cp", "/dev/stdin", os.path.join(a, name)], input=make_msg(tag),
                       check=True)
    assert len(state(c, "A")) == 3
    # Another writer keeps writing into B for longer than the linger.
    with open(os.path.join(m, "B", "slow.eml"), "wb") as f:
        f.write(make_msg("slow")[:40])
        for i in range(12):
            f.flush()
            time.sleep(0.3)
            f.write(b"X-Line: %d\r\n" % i)
            if i == 10:
                # The listing of A is the UIDs again, with the right bytes.
                assert sorted(os.listdir(a)) == ["1.eml", "2.eml", "3.eml"]
                with open(os.path.join(a, "1.eml"), "rb") as g:
                    assert b"x@imapfuse.test" in g.read()
        f.write(make_msg("slow")[40:])


def test_tar_with_xattrs_restores_messages_and_flags(empty_dovecot, fs, tmp_path):
    """GNU tar makes each file it restores with xattrs by mknod, then
    opens it (every message has user.imap.flags): mknod of a regular file
    is a create, so a `tar --xattrs` backup of the mount goes back into
    it with its flags (it failed with EPERM on every file).  Nothing but
    a regular file can be made."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Src")
    flags = [r"(\Seen)", r"(\Flagged $Work)", ""]
    for i, fl in enumerate(flags):
        imap_append(c, "Src", make_msg("tx%d" % i, lf=False), flags=fl)
    m = fs(dv)
    tar = tmp_path / "x.tar"
    subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-cf", str(tar),
                    "-C", m, "Src"], check=True, timeout=60)
    os.mkdir(os.path.join(m, "TX"))
    r = subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-xf", str(tar),
                        "-C", os.path.join(m, "TX")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr

    def by_mid(box):
        return {v["mid"]: (v["body"], v["flags"]) for v in state(c, box).values()}
    want = by_mid("Src")
    assert len(want) == 3 and {"\\Flagged", "$Work"} in [f for _, f in want.values()]
    assert by_mid("TX/Src") == want
    box = os.path.join(m, "TX", "Src")
    expect_errno(errno.EPERM, os.mkfifo, os.path.join(box, "fifo"))
    expect_errno(errno.EPERM, os.mknod, os.path.join(box, "dev"), 0o600 | stat.S_IFCHR,
                 os.makedev(1, 3))
    assert len(state(c, "TX/Src")) == 3


@pytest.mark.imapfuse_stderr_ok(r"could not store .*nothing but CRs")
def test_line_ends_are_stored_as_the_server_keeps_them(empty_dovecot, fs, xdg, tmp_path):
    """Line ends go as CRLF: a bare LF, and CRs before an LF ("\\r\\r\\n",
    which Dovecot stored one CR shorter), become CRLF, CRs at the end go;
    CRs inside a line stay.  Then the stored message is the one sent, and
    copying the file again finds it (it was stored again at every cp)."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, "list_max_age=0")  # the other client's APPEND: seen at once
    os.mkdir(os.path.join(m, "LE"))
    box = os.path.join(m, "LE")
    tail = b"a\rb\r\r\nc\nd\n\re\r\r\r\nf\r\n\r\r"
    data = make_msg(new_tag("le"), lf=False) + tail
    src = tmp_path / "le.eml"
    src.write_bytes(data)
    want = re.sub(rb"\r*\n", b"\r\n", data).rstrip(b"\r")
    assert want.endswith(b"a\rb\r\nc\r\nd\r\n\re\r\nf\r\n")
    for dst in (box + "/", os.path.join(box, "again.eml"), os.path.join(box, "third.eml")):
        subprocess.run(["cp", str(src), dst], check=True)
    st = state(c, "LE")
    assert [v["body"] for v in st.values()] == [want]
    uid = next(iter(st))
    with open(os.path.join(box, eml(uid)), "rb") as f:
        assert f.read() == want
    # A message already on the server with such CRs (Dovecot keeps all but
    # one of a run: APPENDed here with imaplib's line-end mapping bypassed),
    # copied out and back in as a restore does, is still that message.
    raw = make_msg(new_tag("kept"), lf=False) + b"x\r\r\r\ny\r\n"
    c.literal = raw
    typ, _ = c._simple_command("APPEND", q("LE"))
    assert typ == "OK"
    (ku, kept), = [(u, v["body"]) for u, v in state(c, "LE").items() if v["body"] != want]
    assert b"x\r\r\ny" in kept, kept
    out = tmp_path / "kept.eml"
    assert eml(ku) in os.listdir(box)
    shutil.copyfile(os.path.join(box, eml(ku)), out)
    assert out.read_bytes() == kept
    subprocess.run(["cp", str(out), box + "/"], check=True)
    assert sorted(v["body"] for v in state(c, "LE").values()) == sorted([want, kept])
    # Nothing but CRs would be an empty message: refused, kept unsent.
    f = open(os.path.join(box, "crs.eml"), "wb")
    f.write(b"\r\r")
    expect_errno(errno.EINVAL, f.close)
    assert len(state(c, "LE")) == 2
    assert [open(k, "rb").read() for k in kept_files(xdg)] == [b"\r\r"]


@pytest.mark.imapfuse_stderr_ok(r"could not store .*NUL")
def test_nul_bytes_are_refused(empty_dovecot, fs, xdg, tmp_path):
    """A message cannot carry a NUL byte (RFC 3501 literals; Dovecot
    stored each as 0x80, so the stored message was not the file, and the
    duplicate check never matched: a second cp stored it again).  close()
    fails with EINVAL; the bytes are kept unsent; nothing is stored."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    junk = os.urandom(5000) + b"\0"
    src = tmp_path / "junk.bin"
    src.write_bytes(junk)
    for _ in range(2):
        r = subprocess.run(["cp", str(src), inbox + "/"], capture_output=True, text=True)
        assert r.returncode == 1 and "Invalid argument" in r.stderr, r.stderr
    data = make_msg(new_tag("nul"), lf=False) + b"a NUL: \0 here\r\n"
    f = open(os.path.join(inbox, "nul.eml"), "wb")
    f.write(data)
    expect_errno(errno.EINVAL, f.close)
    assert state(c, "INBOX") == {}
    assert sorted(open(k, "rb").read() for k in kept_files(xdg)) == sorted(
        [junk, junk, data])
    assert os.listdir(inbox) == []
    m.unmount()
    lines = [l for l in m.stderr_text().splitlines() if "could not store" in l]
    assert len(lines) == 3 and all("NUL" in l for l in lines), lines


# ---------------------------------------------------------------- flags

def test_flags_xattr(empty_dovecot, fs):
    dv = empty_dovecot()
    c = dv.imap()
    a = imap_append(c, "INBOX", make_msg("A"), flags=r"(\Flagged $Work \Seen)")
    b = imap_append(c, "INBOX", make_msg("B"))
    m = fs(dv, "list_max_age=0")  # another client's changes: seen at the next opendir
    pa = os.path.join(m, "INBOX", eml(a))
    pb = os.path.join(m, "INBOX", eml(b))
    assert os.getxattr(pa, "user.imap.flags") == b"\\Seen \\Flagged $Work"
    assert os.getxattr(pb, "user.imap.flags") == b""
    assert os.listxattr(pa) == ["user.imap.flags"]
    r = subprocess.run(["getfattr", "-n", "user.imap.flags", "--only-values", pa],
                       stdout=subprocess.PIPE, check=True)
    assert r.stdout == b"\\Seen \\Flagged $Work"
    # Reading does not set \Seen.
    open(pb, "rb").read()
    assert state(c, "INBOX")[b]["flags"] == set()
    # Set (replace).
    os.setxattr(pb, "user.imap.flags", b"\\Answered $Later \\draft")
    assert state(c, "INBOX")[b]["flags"] == {"\\Answered", "$Later", "\\Draft"}
    assert set(os.getxattr(pb, "user.imap.flags").split()) == {
        b"\\Answered", b"$Later", b"\\Draft"}
    subprocess.run(["setfattr", "-n", "user.imap.flags", "-v", "\\Seen", pb], check=True)
    assert state(c, "INBOX")[b]["flags"] == {"\\Seen"}
    # Bad syntax: EINVAL, nothing changed.
    for bad in (b"\\Recent", b"\\*", b"(x", b"a\"b", b"\\Bogus", b"x]", b"%",
                b"{5}", b"\\Seen\r\nA1 EXPUNGE"):
        expect_errno(errno.EINVAL, os.setxattr, pb, "user.imap.flags", bad)
    assert state(c, "INBOX")[b]["flags"] == {"\\Seen"}
    # Other attributes are not supported.
    expect_errno(errno.ENOTSUP, os.setxattr, pb, "user.other", b"x")
    expect_errno(errno.ENODATA, os.getxattr, pb, "user.other")
    # removexattr = no flags.
    os.removexattr(pa, "user.imap.flags")
    assert state(c, "INBOX")[a]["flags"] == set()
    # The attribute exists while there are flags: create only when none,
    # replace only when some.
    expect_errno(errno.ENODATA, os.setxattr, pa, "user.imap.flags", b"\\Seen",
                 os.XATTR_REPLACE)
    expect_errno(errno.EEXIST, os.setxattr, pb, "user.imap.flags", b"\\Seen",
                 os.XATTR_CREATE)
    os.setxattr(pa, "user.imap.flags", b"$New", os.XATTR_CREATE)
    os.setxattr(pa, "user.imap.flags", b"", os.XATTR_REPLACE)
    assert state(c, "INBOX")[a]["flags"] == set()
    # With no flags the attribute is not there: removing it is ENODATA,
    # setting it empty (an old backup's) changes nothing.
    expect_errno(errno.ENODATA, os.removexattr, pa, "user.imap.flags")
    os.setxattr(pa, "user.imap.flags", b"")
    assert state(c, "INBOX")[a]["flags"] == set()
    assert state(c, "INBOX")[b]["flags"] == {"\\Seen"}
    # Changed elsewhere: seen after the next listing.
    c.select("INBOX")
    c.uid("STORE", str(a), "+FLAGS", r"(\Flagged)")
    os.listdir(os.path.join(m, "INBOX"))
    assert os.getxattr(pa, "user.imap.flags") == b"\\Flagged"


def test_cp_a_between_mailboxes_keeps_flags_and_date(empty_dovecot, fs):
    """cp -a copies user.imap.flags and the mtime onto the new file before
    closing it: they become the APPEND's flags and INTERNALDATE."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Other")
    a = imap_append(c, "INBOX", make_msg("A", lf=False), flags=r"(\Flagged $Work)",
                    date=1234567000)
    m = fs(dv)
    subprocess.run(["cp", "-a", os.path.join(m, "INBOX", eml(a)),
                    os.path.join(m, "Other", "copy.eml")], check=True)
    st = state(c, "Other")
    assert len(st) == 1
    (u, msg), = st.items()
    assert msg["flags"] == {"\\Flagged", "$Work"}
    assert msg["date"] == 1234567000
    assert msg["body"] == make_msg("A", lf=False)
    assert sorted(state(c, "INBOX")) == [a]


# ---------------------------------------------------------------- refusals

def test_refusals_on_messages(empty_dovecot, fs, tmp_path):
    dv = empty_dovecot()
    c = dv.imap()
    when = 1600000000
    a = imap_append(c, "INBOX", make_msg("A"), date=when)
    m = fs(dv)
    p = os.path.join(m, "INBOX", eml(a))
    st = os.stat(p)
    assert st.st_mtime == when
    expect_errno(errno.EPERM, os.chmod, p, 0o644)
    os.chmod(p, st.st_mode & 0o777)  # no change: fine
    expect_errno(errno.EPERM, os.chown, p, st.st_uid + 1, -1)
    os.chown(p, st.st_uid, st.st_gid)
    expect_errno(errno.EPERM, os.truncate, p, 0)
    expect_errno(errno.EPERM, open, p, "r+b")
    expect_errno(errno.EPERM, open, p, "ab")
    expect_errno(errno.EPERM, os.utime, p, (when + 5, when + 5))
    os.utime(p, (when, when))
    expect_errno(errno.EPERM, os.utime, p, None)  # touch
    expect_errno(errno.EPERM, os.link, p, os.path.join(m, "INBOX", "hard.eml"))
    expect_errno(errno.EPERM, os.symlink, p, os.path.join(m, "INBOX", "sym.eml"))
    expect_errno(errno.EPERM, os.mkfifo, os.path.join(m, "INBOX", "fifo"))
    # Editors' swap and auto-save files would be messages others see.
    for scratch in (".%s.swp" % eml(a), ".x.swo", "#%s#" % eml(a)):
        expect_errno(errno.EPERM, open, os.path.join(m, "INBOX", scratch), "wb")
    r = subprocess.run(["cp", str(tmp_path), p], stderr=subprocess.PIPE)
    assert r.returncode != 0
    st2 = state(c, "INBOX")
    assert list(st2) == [a] and st2[a]["body"] == make_msg("A", lf=False)
    assert st2[a]["date"] == when


EMPTIED_WARNING = r'was emptied, but a message cannot be empty'


@pytest.mark.imapfuse_stderr_ok(EMPTIED_WARNING)
def test_stored_file_cannot_be_emptied(empty_dovecot, fs):
    """A file stored a moment ago is still under its name: `truncate -s
    0` of it, or an open with O_TRUNC closed with nothing written, used to
    return 0 and leave the name reading as empty while the server kept the
    message.  Both are refused now; the name never reads other bytes than
    the stored ones, and the message is untouched."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    box = os.path.join(m, "INBOX")
    a, b = os.path.join(box, "a.eml"), os.path.join(box, "b.eml")
    for p, tag in ((a, "A"), (b, "B")):
        with open(p, "wb") as f:
            f.write(make_msg(tag))
    before = state(c, "INBOX")
    assert sorted(v["mid"] for v in before.values()) == ["A@imapfuse.test", "B@imapfuse.test"]
    expect_errno(errno.EPERM, os.truncate, a, 0)
    with open(a, "rb") as f:
        assert f.read() == make_msg("A")
    fd = os.open(b, os.O_WRONLY | os.O_TRUNC)
    expect_errno(errno.EPERM, os.close, fd)
    # The name is given up: the message answers under its UID alone.
    wait_for(lambda: not os.path.exists(b), what="b.eml gone")
    uid_b = [u for u, v in before.items() if v["mid"] == "B@imapfuse.test"][0]
    with open(os.path.join(box, eml(uid_b)), "rb") as f:
        assert f.read() == make_msg("B", lf=False)
    assert state(c, "INBOX") == before
    assert len(re.findall(EMPTIED_WARNING, m.stderr_text())) == 1
    # Emptied and then written: that is a new version, stored as ever.
    with open(a, "r+b") as f:
        f.truncate(0)
        f.write(make_msg("A2"))
    after = state(c, "INBOX")
    assert sorted(v["mid"] for v in after.values()) == ["A2@imapfuse.test", "B@imapfuse.test"]


def test_directory_attributes(empty_dovecot, fs):
    """chmod/utimes of a directory (rsync -a, cp -a do them) are kept for
    the mount's lifetime; chown to another owner is refused."""
    dv = empty_dovecot()
    m = fs(dv)
    d = os.path.join(m, "INBOX")
    os.chmod(d, 0o755)
    assert os.stat(d).st_mode & 0o777 == 0o755
    os.utime(d, (1111111111, 1111111111))
    assert os.stat(d).st_mtime == 1111111111
    expect_errno(errno.EPERM, os.chown, d, os.stat(d).st_uid + 1, -1)


# ---------------------------------------------------------------- random

SEED = 20240611


def test_random_operations_match_model(empty_dovecot, fs):
    """A few hundred operations through the mount and from a second client,
    mixed; the server must end up exactly like the model: nothing lost,
    nothing duplicated, flags and places right."""
    import random
    rng = random.Random(SEED)
    dv = empty_dovecot()
    c = dv.imap()      # the second client
    chk = dv.imap()    # only reads
    model = {"INBOX": {}}  # mailbox -> {tag: frozenset(flags)}
    names = ["Box %d", "Ré %d", "q\"%d", "p%%%d", "s*%d"]
    for i in range(3):
        n = names[i % len(names)] % i
        c.create(q(wire(n)))
        model[n] = {}
    for i in range(10):
        t = new_tag("seed")
        imap_append(c, "INBOX", make_msg(t))
        model["INBOX"][t] = frozenset()
    m = fs(dv, "list_max_age=0")  # another client's changes: seen at the next opendir
    FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "$Work", "$Later"]
    counter = [len(model)]

    def path(box, *rest):
        return os.path.join(m, shown(box), *rest)

    def pick_msg():
        boxes = [b for b in model if model[b]]
        if not boxes:
            return None, None
        b = rng.choice(sorted(boxes))
        return b, rng.choice(sorted(model[b]))

    def _random_step(op):
        if op == "cp":
            b = rng.choice(sorted(model))
            t = new_tag("cp")
            write_file(path(b, "f %s.eml" % t), make_msg(t, lf=rng.random() < 0.5))
            model[b][t] = frozenset()
        elif op == "rm":
            b, t = pick_msg()
            if b is None:
                return
            os.unlink(path(b, eml(uid_of(chk, wire(b), t))))
            del model[b][t]
        elif op == "mv":
            b, t = pick_msg()
            others = sorted(x for x in model if x != b)
            if b is None or not others:
                return
            d = rng.choice(others)
            u = uid_of(chk, wire(b), t)
            os.rename(path(b, eml(u)), path(d, rng.choice([eml(u), "x.eml"])))
            model[d][t] = model[b].pop(t)
        elif op == "flags":
            b, t = pick_msg()
            if b is None:
                return
            fl = frozenset(rng.sample(FLAGS, rng.randint(0, 3)))
            os.setxattr(path(b, eml(uid_of(chk, wire(b), t))), "user.imap.flags",
                        " ".join(sorted(fl)).encode())
            model[b][t] = fl
        elif op == "mkdir":
            counter[0] += 1
            n = names[counter[0] % len(names)] % counter[0]
            os.mkdir(path(n))
            model[n] = {}
        elif op == "rmdir":
            cands = sorted(b for b in model if b != "INBOX")
            if not cands:
                return
            b = rng.choice(cands)
            if model[b]:
                expect_errno(errno.ENOTEMPTY, os.rmdir, path(b))
            else:
                os.rmdir(path(b))
                del model[b]
        elif op == "ls":
            b = rng.choice(sorted(model))
            got = sorted(os.listdir(path(b)))
            want = sorted(eml(u) for u in state(chk, wire(b)))
            assert got == want, (b, got, want)
        else:  # the second client
            kind = rng.choice(["append", "flag", "expunge", "create"])
            if kind == "append":
                b = rng.choice(sorted(model))
                t = new_tag("other")
                fl = frozenset(rng.sample(FLAGS, rng.randint(0, 2)))
                imap_append(c, wire(b), make_msg(t, lf=False),
                            flags="(%s)" % " ".join(sorted(fl)) if fl else "")
                model[b][t] = fl
                # A user looks before acting on mail that arrived
                # elsewhere (lookups trust a listing younger than 1 s).
                os.listdir(path(b))
            elif kind == "flag":
                b, t = pick_msg()
                if b is None:
                    return
                u = uid_of(c, wire(b), t)
                c.select(q(wire(b)))
                c.uid("STORE", str(u), "+FLAGS.SILENT", "(\\Flagged)")
                model[b][t] = model[b][t] | {"\\Flagged"}
            elif kind == "expunge":
                b, t = pick_msg()
                if b is None:
                    return
                u = uid_of(c, wire(b), t)
                c.select(q(wire(b)))
                c.uid("STORE", str(u), "+FLAGS.SILENT", "(\\Deleted)")
                c.uid("EXPUNGE", str(u))
                del model[b][t]
            else:
                counter[0] += 1
                n = "ext %d" % counter[0]
                c.create(q(wire(n)))
                model[n] = {}
                time.sleep(1.1)  # see test_rmdir_asks_the_server

    ops = 0
    history = []
    for step in range(300):
        op = rng.choice(["cp", "cp", "rm", "mv", "mv", "flags", "mkdir",
                         "rmdir", "ls", "other"])
        ops += 1
        history.append(op)
        try:
            _random_step(op)
        except Exception as e:
            raise AssertionError("step %d (%s) failed; ops so far: %s" % (
                step, op, " ".join(history[-15:]))) from e
    assert ops == 300

    # The server equals the model.
    server_boxes = mailboxes(chk)
    assert server_boxes == {wire(b) for b in model}, (server_boxes, sorted(model))
    seen = []
    for b in model:
        st = state(chk, wire(b))
        got = {x["mid"].split("@")[0]: frozenset(x["flags"]) for x in st.values()}
        assert got == model[b], b
        seen.extend(got)
    assert len(seen) == len(set(seen)), "duplicated messages"
    # And the mount shows it.
    for b in model:
        assert sorted(os.listdir(path(b))) == sorted(eml(u) for u in state(chk, wire(b)))


def test_folder_names_typed_unescaped_find_the_folder(empty_dovecot, fs):
    """mkdir takes a name as typed (x% is the folder "x%"), but the folder
    is listed escaped (x%25): mkdir x% succeeded and x% was not there
    afterwards, and mkdir pct%x made nothing and said 0 where "pct%x" was
    there already (made as pct%25x).  A typed name finds its folder."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    os.mkdir(os.path.join(m, "x%"))
    assert "x%" in mailboxes(c)
    assert "x%25" in os.listdir(m)
    assert os.path.isdir(os.path.join(m, "x%"))
    write_file(os.path.join(m, "x%", "n.eml"), make_msg("typed"))
    assert mids(c, "x%") == ["typed@imapfuse.test"]
    os.mkdir(os.path.join(m, "pct%25x"))
    assert "pct%x" in mailboxes(c)
    expect_errno(errno.EEXIST, os.mkdir, os.path.join(m, "pct%x"))


# ---------------------------------------------------------------- names that outlive their message

def test_written_name_ends_with_its_message(empty_dovecot, fs, tmp_path):
    """A written file's name stands for the message it became: once that
    message is removed (by its UID name, or seen gone by a listing) the
    name is gone at once, and can neither be read, moved nor written back
    into a message."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("F")
    c.create("L3")
    m = fs(dv)
    box = os.path.join(m, "F")
    write_file(os.path.join(box, "a.eml"), make_msg("NA"))
    ua = uid_of(c, "F", "NA")
    os.unlink(os.path.join(box, eml(ua)))
    assert state(c, "F") == {}
    expect_errno(errno.ENOENT, os.stat, os.path.join(box, "a.eml"))
    expect_errno(errno.ENOENT, open, os.path.join(box, "a.eml"), "rb")
    expect_errno(errno.ENOENT, os.rename, os.path.join(box, "a.eml"),
                 os.path.join(m, "L3", "a.eml"))
    # Appending to the name creates a new file; the old message stays gone.
    write_file(os.path.join(box, "c.eml"), make_msg("NC"))
    uc = uid_of(c, "F", "NC")
    os.unlink(os.path.join(box, eml(uc)))
    with open(os.path.join(box, "c.eml"), "ab") as f:
        f.write(b"more\n")
    assert [v["mid"] for v in state(c, "F").values()] == [None]
    assert [v["body"] for v in state(c, "F").values()] == [b"more\r\n"]
    # Removed by another client: the next listing ends the name.
    write_file(os.path.join(box, "d.eml"), make_msg("ND"))
    ud = uid_of(c, "F", "ND")
    c.select(q("F"))
    c.uid("STORE", str(ud), "+FLAGS.SILENT", r"(\Deleted)")
    c.uid("EXPUNGE", str(ud))
    wait_for(lambda: eml(ud) not in os.listdir(box), timeout=30, what="expunge seen")
    expect_errno(errno.ENOENT, os.stat, os.path.join(box, "d.eml"))

    # rsync --delete twice within the lingering time: nothing lost.
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(6):
        write_file(tree / ("r%d.eml" % i), make_msg("RS%d" % i),
                   mtime=1500000000 + i)
    c.create("RsDel")
    dst = os.path.join(m, "RsDel")
    for run in range(2):
        _rsync("--delete", str(tree) + "/", dst + "/")
        assert sorted(mids(c, "RsDel")) == sorted(
            "RS%d@imapfuse.test" % i for i in range(6)), run


def test_save_by_copy_rm_and_write_keeps_the_flags(empty_dovecot, fs):
    """vim's save when its rename to NAME~ is refused: copy NAME to NAME~,
    rm NAME, write NAME anew, rm NAME~.  The new version lost every flag
    (an exploratory test); now it keeps them, as sed -i's rename does.
    Flags set on the new file win, and without the NAME~ copy (tar's rm
    and write) the new file gets none."""
    dv = empty_dovecot()
    c = dv.imap()
    old = crlf(make_msg("vim"))
    u = imap_append(c, "INBOX", old, flags=r"(\Seen \Flagged $Work)")
    u2 = imap_append(c, "INBOX", crlf(make_msg("vim2")), flags=r"(\Answered)")
    u3 = imap_append(c, "INBOX", crlf(make_msg("late")), flags=r"(\Flagged)")
    m = fs(dv, "linger=2")
    box = os.path.join(m, "INBOX")

    def save(uid, data, flags=None):
        name = os.path.join(box, eml(uid))
        shutil.copyfile(name, name + "~")
        os.unlink(name)
        with open(name, "wb") as f:
            if flags is not None:
                os.setxattr(f.fileno(), "user.imap.flags", flags)
            f.write(data)
        os.unlink(name + "~")

    new = old.replace(b"Subject: ", b"Subject: edited ")
    save(u, new)
    st = state(c, "INBOX")
    assert sorted(v["body"] for v in st.values() if b"edited" in v["body"]) == [new]
    assert len(st) == 3, st
    got = [v for v in st.values() if v["body"] == new][0]
    assert got["flags"] == {"\\Seen", "\\Flagged", "$Work"}
    # Flags of its own win.
    new2 = crlf(make_msg("vim2")).replace(b"Subject: ", b"Subject: own ")
    save(u2, new2, flags=b"$Mine")
    got = [v for v in state(c, "INBOX").values() if v["body"] == new2]
    assert [v["flags"] for v in got] == [{"$Mine"}]
    # rm, then a new file under the name with no NAME~ copy made (tar
    # restoring a message that had no flags: it removes the file first):
    # no flags of the message it replaces.
    os.unlink(os.path.join(box, eml(u3)))
    late = crlf(make_msg("late")).replace(b"Subject: ", b"Subject: restored ")
    with open(os.path.join(box, eml(u3)), "wb") as f:
        f.write(late)
    got = [v for v in state(c, "INBOX").values() if v["body"] == late]
    assert [v["flags"] for v in got] == [set()]


def test_the_old_inode_of_a_moved_message_still_opens(empty_dovecot, fs):
    """After mv G1/N.eml G2/, the kernel's entry for the name mv gave is the
    message's old inode until imapfuse's invalidation of it is through
    (another thread sends it): sed -i right after mv failed at times with
    "can't read: No such file" (a full test run).  An O_PATH handle held
    across the mv reaches that inode every time: it opens and reads the
    moved message, as it would on a disk."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("G1")
    c.create("G2")
    for i in range(3):
        imap_append(c, "G2", crlf(make_msg("G2-%d" % i)))
    body = crlf(make_msg("moving"))
    u = imap_append(c, "G1", body)
    m = fs(dv)
    src = os.path.join(m, "G1", eml(u))
    fd = os.open(src, os.O_PATH)
    try:
        subprocess.run(["mv", src, os.path.join(m, "G2", "moved.eml")], check=True)
        with open("/proc/self/fd/%d" % fd, "rb") as f:
            assert f.read() == body
        assert os.stat("/proc/self/fd/%d" % fd).st_size == len(body)
    finally:
        os.close(fd)
    assert [v["body"] for v in state(c, "G2").values()].count(body) == 1
    assert state(c, "G1") == {}


def test_new_files_named_like_expunged_uids_cost_no_listing(empty_dovecot, fs):
    """cp of N.eml into a folder (what cp -r, rsync back and restores
    write) listed the folder again three times per file, SELECT and a
    changes FETCH each: 263 ms a file into a folder of 43,000 (an
    exploratory test).  A UID below the folder's UIDNEXT that is not in
    its listing was expunged and never comes back, so such a name needs
    no new listing; a name at or above UIDNEXT still asks the server."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Box")
    uids = [imap_append(c, "Box", crlf(make_msg("old%d" % i))) for i in range(30)]
    gone = uids[5:15]
    c.select("Box")
    c.uid("STORE", ",".join(map(str, gone)), "+FLAGS.SILENT", r"(\Deleted)")
    c.expunge()
    m = fs(dv, "imap_debug")
    box = os.path.join(m, "Box")
    assert len(os.listdir(box)) == 20
    before = len(m.stderr_text())
    for u in gone:
        write_file(os.path.join(box, eml(u)), crlf(make_msg("new%d" % u)))
    sent = re.findall(r"C: A\d+ ([^\n]*)", m.stderr_text()[before:])
    # At most one listing for the ten (it was three a file); a SELECT each
    # on the connections the APPENDs' checks take is no listing.
    listings = [x for x in sent if x.startswith("UID FETCH 1:*")]
    assert len(listings) <= 1, listings
    assert len([x for x in sent if x.startswith(("SELECT", "EXAMINE"))]) <= 4, sent
    assert len([x for x in sent if x.startswith("APPEND")]) == 10, sent
    assert len(state(c, "Box")) == 30
    # A name at UIDNEXT or above may be a message that just arrived: asked.
    nxt = imap_append(c, "Box", crlf(make_msg("arrived")))
    with open(os.path.join(box, eml(nxt)), "rb") as f:
        assert b"arrived" in f.read()


def test_a_uid_below_uidnext_of_a_folder_made_again_is_found(empty_dovecot, fs):
    """A UID below a listing's UIDNEXT that the listing lacks is expunged
    for good, but only under that UIDVALIDITY: after another client
    deleted and made the folder again, its new message UID 1 gave ENOENT
    (a reviewer's test).  A listing older than list_max_age is asked
    again first."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Box")
    for i in range(5):
        imap_append(c, "Box", crlf(make_msg("old%d" % i)))
    c.select("Box")
    c.uid("STORE", "1:3", "+FLAGS.SILENT", r"(\Deleted)")
    c.expunge()
    c.close()
    m = fs(dv, "poll=0", "list_max_age=1")
    box = os.path.join(m, "Box")
    assert sorted(os.listdir(box)) == ["4.eml", "5.eml"]  # UIDNEXT 6
    c.delete("Box")
    c.create("Box")
    u = imap_append(c, "Box", crlf(make_msg("again")))
    assert u == 1
    time.sleep(1.2)
    with open(os.path.join(box, "1.eml"), "rb") as f:
        assert b"again@imapfuse.test" in f.read()


def test_sed_i_of_a_name_given_to_mv_replaces_the_moved_message(empty_dovecot, fs):
    """mv G1/N.eml G2/foo.eml (or G2/, keeping N.eml), then sed -i of that
    name: the name stands for the moved message, and sed's new file
    renamed over it must replace that message, as over a listed N.eml.
    Both versions stayed."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("G1")
    for i in range(5):  # G1's UIDs above G2's and G3's: G3/N.eml is no message of G3
        imap_append(c, "G1", crlf(make_msg("G1-%d" % i)))
    moved = {}
    for box in ("G2", "G3"):
        c.create(box)
        for i in range(3):  # so that the moved message's new UID differs
            imap_append(c, box, crlf(make_msg("%s-%d" % (box, i))))
        moved[box] = imap_append(c, "G1", crlf(make_msg("moved-" + box)))
    m = fs(dv)
    for box, name in (("G2", "foo.eml"), ("G3", None)):
        u = moved[box]
        dst = os.path.join(m, box, name or eml(u))
        subprocess.run(["mv", os.path.join(m, "G1", eml(u)), dst], check=True)
        r = subprocess.run(["sed", "-i", "s/^Subject: /Subject: edited /", dst],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        edited = [v for v in state(c, box).values() if b"moved-" + box.encode() in v["body"]]
        assert [b"Subject: edited " in v["body"] for v in edited] == [True], edited
        assert len(state(c, box)) == 4


def test_mv_many_into_another_folder_with_gnu_mv(empty_dovecot, fs):
    """GNU mv stats each destination name after its rename: that name
    answers for the moved message (its new UID) a while, is never listed,
    goes with the message (rm of it, or of the new UID name), and never
    shadows a message of the target folder that has that name."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("A")
    c.create("B")
    c.create("C")
    for i in range(40):
        imap_append(c, "A", crlf(make_msg("MV%d" % i)))
    c.select(q("A"))
    c.uid("STORE", "1:28", "+FLAGS.SILENT", r"(\Deleted)")
    c.uid("EXPUNGE", "1:28")
    b1 = imap_append(c, "B", crlf(make_msg("B1")))
    b2 = imap_append(c, "B", crlf(make_msg("B2")))
    m = fs(dv)
    a, b = os.path.join(m, "A"), os.path.join(m, "B")
    names = sorted(os.listdir(a))
    assert names == sorted(eml(u) for u in range(29, 41))
    r = subprocess.run(["mv"] + names + [b], cwd=a, capture_output=True, text=True,
                       timeout=120)
    assert (r.returncode, r.stderr) == (0, "")
    st = state(c, "B")
    assert len(st) == 14 and state(c, "A") == {}
    listed = sorted(os.listdir(b))
    assert listed == sorted(eml(u) for u in st)  # no second names
    with open(os.path.join(b, eml(b1)), "rb") as f:
        assert f.read() == crlf(make_msg("B1"))
    # 35.eml stands for what was A's 35.
    n35 = uid_of(c, "B", "MV34")
    assert os.stat(os.path.join(b, "35.eml")).st_ino == os.stat(os.path.join(b, eml(n35))).st_ino
    with open(os.path.join(b, "35.eml"), "rb") as f:
        assert f.read() == crlf(make_msg("MV34"))
    # rm of the name removes that message, then the name is gone.
    os.unlink(os.path.join(b, "35.eml"))
    assert n35 not in state(c, "B")
    expect_errno(errno.ENOENT, os.stat, os.path.join(b, "35.eml"))
    # rm of the new UID name ends the mv name too.
    n36 = uid_of(c, "B", "MV35")
    os.unlink(os.path.join(b, eml(n36)))
    expect_errno(errno.ENOENT, os.stat, os.path.join(b, "36.eml"))
    # mv of the name moves the message on.
    os.rename(os.path.join(b, "37.eml"), os.path.join(m, "C", "37.eml"))
    assert mids(c, "C") == ["MV36@imapfuse.test"]
    expect_errno(errno.ENOENT, os.stat, os.path.join(b, "37.eml"))
    assert os.stat(os.path.join(m, "C", "37.eml")).st_size > 0
    # A name that is a message of the target already stays that message.
    u = imap_append(c, "C", crlf(make_msg("C2")))
    os.rename(os.path.join(b, "38.eml"), os.path.join(m, "C", eml(1)))
    with open(os.path.join(m, "C", eml(1)), "rb") as f:
        assert f.read() == crlf(make_msg("MV36"))
    assert "%d.eml" % 38 not in os.listdir(os.path.join(m, "C"))
    assert u in state(c, "C")


def test_backup_with_the_messages_own_date_is_not_a_new_message(empty_dovecot, fs):
    """nano -B: the backup 1.eml~ is a copy of message 1 (nothing
    appended), then gets message 1's times after its fsync: that changes
    nothing that would be stored, so no second copy."""
    dv = empty_dovecot()
    c = dv.imap()
    u = imap_append(c, "INBOX", crlf(make_msg("NB")), date=1600000000)
    m = fs(dv)
    inbox = os.path.join(m, "INBOX")
    orig = os.path.join(inbox, eml(u))
    data = open(orig, "rb").read()
    st = os.stat(orig)
    with open(os.path.join(inbox, eml(u) + "~"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        os.utime(os.path.join(inbox, eml(u) + "~"), (st.st_atime, st.st_mtime))
    assert list(state(c, "INBOX")) == [u]
    # A date of its own is still a message of its own.
    os.utime(os.path.join(inbox, eml(u) + "~"), (1000000000, 1000000000))
    assert sorted(v["date"] for v in state(c, "INBOX").values()) == [1000000000, 1600000000]

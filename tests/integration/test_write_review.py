"""Review of the write path: failure paths, stale UIDs, races.

Each test was written to fail against a bug found in review (or to pin a
failure path the promise "impossible to lose mail" depends on).  Outcomes
are checked from an independent imaplib connection.  Some tests put a
small TCP proxy (loopback only) between imapfuse and Dovecot, to hold an
APPEND or to cut the connection right after the server stored one.
"""

import errno
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import build_dir
from dovecot import QUOTA_CONFIG, capability_without
from test_write import (UNSENT_WARNING, crlf, eml, fs, imap_append,  # noqa: F401
                        mailboxes, make_msg, mids, q, small_tmpfs, state, uid_of,
                        unsent_files, write_file, xdg)


# ---------------------------------------------------------------- a proxy

class Proxy:
    """127.0.0.1:port -> 127.0.0.1:target, one thread pair per connection.

    hold_next(mailbox): the next APPEND to that mailbox is held (nothing
    of it reaches the server) until release() is called; .held is set
    when it arrives.  hold_next_select(mailbox): the same for
    a SELECT (and what was sent with it): a server that does not answer.
    cut_next_append(): the next APPEND goes to the server, but the
    connection is cut when the server's tagged reply comes (so the client
    does not know the message was stored).  Both are one-shot.
    hold_next(mailbox, verb=b"RENAME") (or DELETE) holds that;
    hold_next(uid, verb=b"UID MOVE") a UID MOVE of that UID.
    .commands: every command seen, as (connection number, mailbox the
    connection last asked to SELECT, verb, first argument, whether a held
    command was waiting then).
    bye_box: a FETCH from a connection that asked to SELECT that mailbox is
    not sent; the client gets "* BYE Mailbox was deleted under us" (what
    Dovecot says while another session deletes it), counted in .byes.
    With no_select set, the SELECT itself gets "NO Mailbox was deleted
    under us" (Dovecot's other answer then) and what came with it BAD.
    hold_next_fetch(mailbox): the next body fetch (UID FETCH ... BODY.PEEK)
    from a connection that asked to SELECT that mailbox is held the same
    way, until release().
    after_list: called once, when the server has answered the next LIST,
    before the client sees the answer.  hide_in_list: a mailbox left out
    of the next hide_times LIST answers.  edit_s2c / edit_c2s: a function
    given whole lines of what the server / client sends, returning what
    goes on instead (to play answers Dovecot gives only in a race).
    cut_after(pattern): the connection whose server next sends pattern is
    cut right after it (one-shot).  drop_all(): every connection open now
    is cut (as a server restart or a NAT timeout does to idle ones)."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.hold_box = None
        self.hold_verb = b"APPEND"
        self.hold_every = False
        self.hold_fetch_box = None
        self.selects_held = 0
        self.held = threading.Event()
        self._go = threading.Event()
        self.cut = None
        self.cuts = 0
        self.appends = 0
        self.commands = []
        self.conns = 0
        self.bye_box = None
        self.no_select = False
        self.byes = 0
        self.after_list = None
        self.hide_in_list = None
        self.hide_times = 1
        self.edit_s2c = None
        self.edit_c2s = None
        self.closed = False
        self.cut_pattern = None
        self.pairs = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, pattern):
        with self.lock:
            self.cut_pattern = pattern

    def blackhole(self):
        """From now on a connect to the proxy's port hangs (as to a host
        that drops SYNs): the listener is replaced by one with a full
        accept queue, and the connections open now are cut."""
        self.closed = True
        self.lsock.shutdown(socket.SHUT_RDWR)  # wakes accept(): else it
        self.lsock.close()                     # stays a listener
        time.sleep(0.1)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(0)
        self.fillers = []
        for _ in range(3):  # what the queue holds; later SYNs are dropped
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(s)
        time.sleep(0.2)
        self.drop_all()

    def drop_all(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for cl, sv, st in pairs:
            self._kill(cl, sv, st)

    def _arm(self, **what):
        """Sets what to hold; the command that matches it waits for release()."""
        with self.lock:
            for name, value in what.items():
                setattr(self, name, value)
            self.held.clear()
            self._go.clear()

    def hold_next(self, arg, verb=b"APPEND"):
        """arg: the mailbox (the UID for UID MOVE) of the command held."""
        self._arm(hold_box=arg.encode(), hold_verb=verb)

    def hold_next_select(self, mailbox, every=False):
        """every: hold all SELECTs of mailbox from now on (counted in
        .selects_held), not only the next."""
        self._arm(hold_box=mailbox.encode(), hold_verb=b"SELECT", hold_every=every)

    def hold_next_fetch(self, mailbox):
        self._arm(hold_fetch_box=mailbox.encode())

    def release(self):
        self._go.set()

    def cut_next_append(self):
        self.cut_next(b"APPEND")

    def cut_next(self, verb):
        """The connection that sends the next `verb` command (b"APPEND",
        b"UID EXPUNGE") is cut when the server answers it: the command
        ran, its reply never arrives."""
        with self.lock:
            self.cut = verb

    def close(self):
        self.closed = True
        self._go.set()
        for s in getattr(self, "fillers", []):
            s.close()
        try:
            self.lsock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.closed:
            try:
                cl, _ = self.lsock.accept()
            except OSError:
                return
            try:
                sv = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                cl.close()
                continue
            self.conns += 1
            st = {"cut_tag": None, "dead": False, "n": self.conns, "selected": None,
                  "list_tag": None}
            with self.lock:
                self.pairs.append((cl, sv, st))
            threading.Thread(target=self._c2s, args=(cl, sv, st), daemon=True).start()
            threading.Thread(target=self._s2c, args=(cl, sv, st), daemon=True).start()

    @staticmethod
    def _kill(cl, sv, st):
        st["dead"] = True
        for s in (cl, sv):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def _edit(self, fn, st, way, data):
        """While fn is set, data goes on in whole lines, through fn."""
        data = st.pop(way, b"") + data
        if fn is None:
            return data
        cut = data.rfind(b"\n") + 1
        st[way] = data[cut:]
        return fn(data[:cut]) if cut else b""

    def _c2s(self, cl, sv, st):
        try:
            while not st["dead"]:
                data = cl.recv(65536)
                if not data:
                    break
                data = self._edit(self.edit_c2s, st, "c2s", data)
                if not data:
                    continue
                hold = False
                for m in re.finditer(rb"(?m)^\S+ (SELECT|EXAMINE|NOOP|APPEND|RENAME|DELETE|"
                                     rb"LOGOUT|UID|STATUS|LIST|CREATE|ENABLE)\b ?(\S*)", data):
                    with self.lock:
                        self.commands.append((st["n"], st["selected"], m.group(1),
                                              m.group(2).strip(b'"'),
                                              self.held.is_set() and not self._go.is_set()))
                    if m.group(1) in (b"SELECT", b"EXAMINE"):
                        st["selected"] = m.group(2).strip(b'"')
                    if m.group(1) == b"LIST" and (self.after_list is not None
                                                  or self.hide_in_list is not None):
                        st["list_tag"] = m.group(0).split(b" ")[0]
                if self.bye_box is not None and self.no_select and st["selected"] == self.bye_box:
                    tags = re.findall(rb"(?m)^(\S+) (SELECT )?", data)
                    with self.lock:
                        self.byes += 1
                    cl.sendall(b"".join(t + (b" NO Mailbox was deleted under us\r\n" if s
                                             else b" BAD No mailbox selected\r\n")
                                        for t, s in tags))
                    st["selected"] = None
                    continue
                if self.bye_box is not None and st["selected"] == self.bye_box \
                        and re.search(rb"(?m)^\S+ UID FETCH ", data):
                    with self.lock:
                        self.byes += 1
                    cl.sendall(b"* BYE Mailbox was deleted under us\r\n")
                    break
                for m in re.finditer(rb"(?m)^(\S+) (APPEND|SELECT|RENAME|DELETE|UID MOVE|"
                                     rb"UID EXPUNGE) (\S+)", data):
                    with self.lock:
                        if self.hold_box is not None and m.group(2) == self.hold_verb \
                                and m.group(3).strip(b'"') == self.hold_box:
                            self.selects_held += m.group(2) == b"SELECT"
                            if not self.hold_every:
                                self.hold_box = None
                            hold = True
                        if m.group(2) == b"APPEND":
                            self.appends += 1
                        if self.cut == m.group(2):
                            self.cut = None
                            st["cut_tag"] = m.group(1)
                with self.lock:
                    if self.hold_fetch_box is not None and st["selected"] == self.hold_fetch_box \
                            and re.search(rb"(?m)^\S+ UID FETCH \S+ \(?BODY\.PEEK", data):
                        self.hold_fetch_box = None
                        hold = True
                if hold:
                    self.held.set()
                    self._go.wait(60)
                sv.sendall(data)
        except OSError:
            pass
        self._kill(cl, sv, st)

    def _s2c(self, cl, sv, st):
        try:
            while not st["dead"]:
                data = sv.recv(65536)
                if not data:
                    break
                data = self._edit(self.edit_s2c, st, "s2c", data)
                if not data:
                    continue
                tag = st["cut_tag"]
                if tag is not None and re.search(rb"(?m)^" + re.escape(tag) + rb" ", data):
                    with self.lock:
                        self.cuts += 1
                    break  # the reply never reaches the client
                with self.lock:
                    pat = self.cut_pattern
                    at = data.find(pat) if pat is not None else -1
                    if at >= 0:
                        self.cut_pattern = None
                        self.cuts += 1
                if at >= 0:
                    cl.sendall(data[:at + len(pat)])
                    break
                tag = st["list_tag"]
                with self.lock:
                    hide = self.hide_in_list if tag is not None else None
                if hide is not None:
                    data, n = re.subn(rb'(?m)^\* LIST \([^)]*\) "[^"]*" "?' + re.escape(hide)
                                      + rb'"?\r\n', b"", data)
                    if n:
                        with self.lock:
                            self.hide_times -= 1
                            if self.hide_times <= 0:
                                self.hide_in_list = None
                if tag is not None and re.search(rb"(?m)^" + re.escape(tag) + rb" ", data):
                    st["list_tag"] = None
                    with self.lock:
                        fn, self.after_list = self.after_list, None
                    if fn is not None:
                        fn()
                cl.sendall(data)
        except OSError:
            pass
        self._kill(cl, sv, st)


@pytest.fixture
def proxy():
    made = []

    def make(port):
        p = Proxy(port)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


def uidvalidity(c, box):
    typ, data = c.status(q(box), "(UIDVALIDITY)")
    assert typ == "OK", data
    return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))


# ---------------------------------------------------------------- stale UIDs

def test_mv_of_new_file_after_uidvalidity_change(empty_dovecot, fs):
    """A file written to Box became UID 1 there; another client then
    deletes and recreates Box (new UIDVALIDITY) and UID 1 is now someone
    else's message.  mv (and getfattr) of the lingering name must not act
    on that other message."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("Box")
    c.create("Other")
    m = fs(dv)
    box = os.path.join(m, "Box")
    p = os.path.join(box, "a.eml")
    write_file(p, make_msg("A"))
    ua = uid_of(c, "Box", "A")
    uv1 = uidvalidity(c, "Box")
    time.sleep(1.1)
    c.select("INBOX")
    assert c.delete("Box")[0] == "OK"
    assert c.create("Box")[0] == "OK"
    ub = imap_append(c, "Box", make_msg("B"), flags=r"(\Flagged)")
    assert ub == ua and uidvalidity(c, "Box") != uv1
    time.sleep(1.1)
    assert os.listdir(box) == [eml(ub)]  # the mount sees the new Box
    with pytest.raises(OSError) as ei:
        os.rename(p, os.path.join(m, "Other", "a.eml"))
    assert ei.value.errno in (errno.ESTALE, errno.ENOENT)
    c2 = dv.imap()  # (c's view of the recreated Box may be confused)
    assert mids(c2, "Box") == ["B@imapfuse.test"]
    assert mids(c2, "Other") == []
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.imap.flags")  # not B's flags
    assert ei.value.errno in (errno.ESTALE, errno.ENOENT)


# ---------------------------------------------------------------- unsent

@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_refused_file_with_long_name_kept_in_unsent(empty_dovecot, fs, xdg):
    """A refused file whose name is near NAME_MAX: the unsent copy's name
    (TIME-NAME) must still fit, so the bytes land in the unsent directory."""
    dv = empty_dovecot(extra_config=QUOTA_CONFIG(storage="64K"))
    c = dv.imap()
    m = fs(dv)
    name = "n" * 246 + ".eml"
    data = make_msg("long", size=200 * 1024)
    f = open(os.path.join(m, "INBOX", name), "wb")
    f.write(data)
    with pytest.raises(OSError) as ei:
        f.close()
    assert ei.value.errno == errno.EDQUOT
    assert state(c, "INBOX") == {}
    kept = [x for x in unsent_files(xdg) if os.path.isfile(x)]
    assert len(kept) == 1, kept
    assert os.path.basename(os.path.dirname(kept[0])) == "INBOX"
    assert kept[0].endswith(".eml") and len(os.path.basename(kept[0])) <= 255
    assert open(kept[0], "rb").read() == data


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_sigterm_while_open_keeps_bytes(empty_dovecot, fs, xdg):
    """imapfuse stopped while a file is still open for writing: what was
    written is kept in the unsent directory, nothing is appended."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    data = make_msg("open", size=50 * 1024)
    fd = os.open(os.path.join(m, "INBOX", "open.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, data)
    m.proc.send_signal(signal.SIGTERM)
    m.proc.wait(20)
    try:
        os.close(fd)
    except OSError:
        pass
    m.unmount(check=False)
    assert "kept in" in m.stderr_text()
    # The handle the kernel never released is freed at exit, not leaked.
    assert "LeakSanitizer" not in m.stderr_text(), m.stderr_text()
    assert state(c, "INBOX") == {}
    kept = [x for x in unsent_files(xdg) if os.path.isfile(x)]
    assert len(kept) == 1, kept
    assert kept[0].endswith("-open.eml")
    assert open(kept[0], "rb").read() == data
    # The private copy it was written to is gone (the process that had
    # it open never released it).
    staging = os.path.join(xdg["XDG_DATA_HOME"], "imapfuse", "staging")
    assert [f for _, _, fs_ in os.walk(staging) for f in fs_] == []


def test_temp_name_pending_at_unmount_is_sent(empty_dovecot, fs, xdg):
    """rsync's temporary name, closed but not renamed at unmount: sent."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv)
    write_file(os.path.join(m, "INBOX", ".t.eml.Qw12Er"), make_msg("pending"))
    assert state(c, "INBOX") == {}
    m.unmount()
    assert mids(c, "INBOX") == ["pending@imapfuse.test"]
    staging = os.path.join(xdg["XDG_DATA_HOME"], "imapfuse", "staging")
    left = [f for _, _, fs_ in os.walk(staging) for f in fs_]
    assert left == []


# ---------------------------------------------------------------- lost connections

@pytest.mark.imapfuse_stderr_ok(r"mv over \S+: stored the new file as UID \d+; removing UID "
                                  r"\d+ was cut off")
def test_sed_i_when_the_expunge_reply_is_lost(empty_dovecot, fs, proxy):
    """sed -i: the edited version is stored, then the old message's UID
    EXPUNGE runs but its reply is lost with the connection. Whether the
    old one went is unknown, so the rename goes ahead; it used to fail, and
    sed then removed its temporary file, the new version, while the old
    one was already expunged: both were lost."""
    dv = empty_dovecot()
    c = dv.imap()
    old = imap_append(c, "INBOX", crlf(make_msg("sedcut")))
    px = proxy(dv.port)
    m = fs(dv, port=px.port)
    p = os.path.join(m, "INBOX", eml(old))
    os.stat(p)
    px.cut_next(b"UID EXPUNGE")
    r = subprocess.run(["sed", "-i", "s/This is sedcut./This is edited./", p],
                       capture_output=True, text=True, timeout=60)
    assert px.cuts == 1
    assert r.returncode == 0, r.stderr
    bodies = [v["body"] for v in state(c, "INBOX").values()]
    assert len(bodies) == 1 and b"This is edited." in bodies[0]


def test_append_reply_lost_dedup_no_duplicate(empty_dovecot, fs, proxy):
    """The connection drops after the server stored the APPEND but before
    its OK arrived: the retry finds the stored message; one message, and
    close() succeeds."""
    dv = empty_dovecot()
    c = dv.imap()
    px = proxy(dv.port)
    m = fs(dv, port=px.port)
    px.cut_next_append()
    data = make_msg("lost")
    write_file(os.path.join(m, "INBOX", "lost.eml"), data)
    assert px.cuts == 1
    st = state(c, "INBOX")
    assert [x["body"] for x in st.values()] == [crlf(data)]
    # The check before the lost APPEND found no identical message, the
    # retry's found one: the lost APPEND stored it, so it is the file's.
    # rm of the file's name removes it.  (Taken for a message that was
    # there before, it stayed, and rm of its UID name appended the file
    # again: a fault-injection round found both.)
    os.unlink(os.path.join(m, "INBOX", "lost.eml"))
    assert state(c, "INBOX") == {}


@pytest.mark.parametrize("then", ["rm", "mv"])
def test_append_reply_lost_then_rm_or_mv_of_the_uid_name(empty_dovecot, fs, proxy, then):
    """After a lost APPEND reply and its retry, rm of the message's UID name
    left it on the server (the file was taken for a copy of a message
    that was there before, and got an APPEND of its own), and mv left it
    in both folders."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("B")
    px = proxy(dv.port)
    m = fs(dv, port=px.port)
    os.listdir(os.path.join(m, "B"))
    px.cut_next_append()
    data = make_msg("lost2")
    write_file(os.path.join(m, "INBOX", "lost2.eml"), data)
    assert px.cuts == 1
    uid, = state(c, "INBOX")
    p = os.path.join(m, "INBOX", eml(uid))
    if then == "rm":
        os.unlink(p)
        assert state(c, "INBOX") == {}
    else:
        os.rename(p, os.path.join(m, "B", eml(uid)))
        assert state(c, "INBOX") == {}
        assert [x["body"] for x in state(c, "B").values()] == [crlf(data)]


@pytest.mark.imapfuse_stderr_ok(UNSENT_WARNING)
def test_append_reply_lost_dedup_off_keeps_bytes(empty_dovecot, fs, proxy, xdg):
    dv = empty_dovecot()
    c = dv.imap()
    px = proxy(dv.port)
    m = fs(dv, "dedup=off", port=px.port)
    px.cut_next_append()
    data = make_msg("lostoff")
    f = open(os.path.join(m, "INBOX", "lostoff.eml"), "wb")
    f.write(data)
    with pytest.raises(OSError) as ei:
        f.close()
    assert ei.value.errno == errno.EIO
    assert mids(c, "INBOX") == ["lostoff@imapfuse.test"]  # stored, but unknown
    kept = [x for x in unsent_files(xdg) if os.path.isfile(x)]
    assert len(kept) == 1 and open(kept[0], "rb").read() == data


# ---------------------------------------------------------------- a folder renamed

def _errno_in_thread(res, key, fn, *args):
    """Starts fn(*args) on a thread; res[key] gets 0, or the errno it raised."""
    def run():
        try:
            fn(*args)
            res[key] = 0
        except OSError as e:
            res[key] = e.errno
    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("verb", ["RENAME", "DELETE"])
def test_nothing_touches_a_folder_while_it_is_renamed(empty_dovecot, fs, proxy, verb):
    """Dovecot leaves a folder's dovecot-uidlist.lock behind when one
    session syncs the folder while another renames or deletes it, and every
    SELECT of the renamed folder then waits (a soak saw two minutes; a loop
    of APPEND, then a NOOP from a session with the folder selected sent
    with the RENAME, did it 2 times in 100).  Any command syncs the selected
    mailbox.  So while our RENAME or DELETE of D is under way, no connection
    that has D selected sends anything: the one that read D is logged out
    first.  Here that connection is the idle one an APPEND elsewhere gets
    (dedup=off: NOOP + APPEND) while the RENAME is held.  (The build before
    the fence fails the RENAME case; in the DELETE case its DELETE happened
    to go on that connection itself.)"""
    dv = empty_dovecot()
    c = dv.imap()
    for box in ("D", "E", "F"):
        c.create(box)
    uid = imap_append(c, "D", make_msg("d"))
    imap_append(c, "F", make_msg("f"))
    px = proxy(dv.port)
    m = fs(dv, "poll=0", "connections=2", "dedup=off", port=px.port)
    os.listdir(os.path.join(m, "E"))  # connection 1 is made; it has E selected
    # Connection 1 selects D (held) while connection 2 lists F; then
    # connection 1, with D selected, is the more recently used.
    px.hold_next_select("D")
    listed = {}
    t = threading.Thread(target=lambda: listed.update(D=os.listdir(os.path.join(m, "D"))))
    t.start()
    assert px.held.wait(10)
    assert os.listdir(os.path.join(m, "F"))
    px.release()
    t.join(30)
    assert listed["D"] == [eml(uid)]
    # Connection 1 (by affinity) reads it: the more recently used now.
    with open(os.path.join(m, "D", eml(uid)), "rb") as f:
        assert f.read() == crlf(make_msg("d"))
    if verb == "DELETE":  # emptied by another client (rmdir asks the server)
        c.select("D")
        c.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
        c.uid("EXPUNGE", str(uid))
        c.close()
    os.listdir(os.path.join(m, "INBOX"))  # its entry is cached: the kernel locks the root for a rename
    px.hold_next("D", verb=verb.encode())
    res = {}
    if verb == "RENAME":
        t = _errno_in_thread(res, "change", os.rename, os.path.join(m, "D"),
                             os.path.join(m, "Dr"))
    else:
        t = _errno_in_thread(res, "change", os.rmdir, os.path.join(m, "D"))
    assert px.held.wait(10)
    w = threading.Thread(target=write_file,
                         args=(os.path.join(m, "INBOX", "new.eml"), make_msg("new")))
    w.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(x[2] == b"APPEND" for x in px.commands):
        time.sleep(0.05)
    appended = any(x[2] == b"APPEND" and x[4] for x in px.commands)
    px.release()
    t.join(30)
    w.join(30)
    assert res == {"change": 0}
    assert appended, "the APPEND waited for the %s" % verb
    during = [x for x in px.commands if x[4] and x[1] == b"D"]
    assert during == [], "commands from a session with D selected while %s ran" % verb
    assert mids(dv.imap(), "INBOX") == ["new@imapfuse.test"]
    names = [x.decode() for x in dv.imap().list()[1]]
    assert not any(n.endswith(' "D"') or n.endswith(" D") for n in names), names
    if verb == "RENAME":
        assert mids(dv.imap(), "Dr") == ["d@imapfuse.test"]


def test_mv_of_a_message_expunged_meanwhile_is_enoent(empty_dovecot, fs, proxy):
    """Another client expunges a message between the check that it exists
    and the UID MOVE of mv (a soak saw it about once a run).  Dovecot
    answers NO [EXPUNGEISSUED]: the message is gone, so ENOENT, not EIO."""
    dv = empty_dovecot()
    c = dv.imap()
    for box in ("A", "B"):
        c.create(box)
    uid = imap_append(c, "A", make_msg("gone"))
    px = proxy(dv.port)
    m = fs(dv, "poll=0", port=px.port)
    assert os.listdir(os.path.join(m, "A")) == [eml(uid)]
    assert os.listdir(os.path.join(m, "B")) == []
    px.hold_next(str(uid), verb=b"UID MOVE")
    res = {}
    t = _errno_in_thread(res, "mv", os.rename, os.path.join(m, "A", eml(uid)),
                         os.path.join(m, "B", "x.eml"))
    assert px.held.wait(10)
    c.select("A")
    c.uid("STORE", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
    c.uid("EXPUNGE", str(uid))
    c.close()
    px.release()
    t.join(30)
    assert res == {"mv": errno.ENOENT}
    assert mids(dv.imap(), "A") == [] and mids(dv.imap(), "B") == []
    assert os.listdir(os.path.join(m, "A")) == []


@pytest.mark.parametrize("times", [1, 2])
def test_mkdir_when_the_list_after_create_misses_it(empty_dovecot, fs, proxy, times):
    """Dovecot's LIST on another session right after a CREATE's OK can miss
    the new folder (soak runs, 4 in 20; a trace showed the next LIST, tens
    of ms later, with it); mkdir then failed with EIO although the folder
    was made.  A proxy leaves the folder out of the first LIST answer, or
    of the first two: the LIST is asked again (the third time after a
    pause), and mkdir succeeds."""
    dv = empty_dovecot()
    px = proxy(dv.port)
    m = fs(dv, "poll=0", port=px.port)
    assert os.listdir(m) == ["INBOX"]
    px.hide_times = times
    px.hide_in_list = b"New"
    os.mkdir(os.path.join(m, "New"))
    assert px.hide_in_list is None  # it was left out as often as asked
    assert sorted(os.listdir(m)) == ["INBOX", "New"]
    assert "New" in mailboxes(dv.imap())


# ---------------------------------------------------------------- races with lingering

def _wait_held(px, timeout=45):
    assert px.held.wait(timeout), "the lingering send never came"


@pytest.mark.slow
def test_open_while_lingering_send_runs(empty_dovecot, fs, proxy):
    """A temporary name never renamed is sent after 30 s and then dropped.
    An open() of it that arrives while that send runs must not give a
    handle on the dropped file: its writes would be accepted and then
    silently never sent (and a read() through it would use the handle as
    a message's)."""
    dv = empty_dovecot()
    c = dv.imap()
    px = proxy(dv.port)
    m = fs(dv, port=px.port)
    tmp = os.path.join(m, "INBOX", ".x.eml.Ab12Cd")
    first = make_msg("linger1")
    write_file(tmp, first)
    px.hold_next("INBOX")
    _wait_held(px)
    res = {}

    def opener():
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND)
        except OSError as e:
            res["open"] = e.errno
            return
        for step, fn in (("write", lambda: os.write(fd, b"appended line\n")),
                         ("read", lambda: os.pread(fd, 10, 0)),
                         ("close", lambda: os.close(fd))):
            try:
                fn()
                res[step] = 0
            except OSError as e:
                res[step] = e.errno
        if res["close"] != 0:
            try:
                os.close(fd)
            except OSError:
                pass
    t = threading.Thread(target=opener)
    t.start()
    time.sleep(1.0)  # the open() waits for the send
    px.release()
    t.join(30)
    assert not t.is_alive()
    bodies = sorted(x["body"] for x in state(c, "INBOX").values())
    if res.get("open") is not None:
        # Refused: the file had gone.  Only the first version is there.
        assert res["open"] == errno.ENOENT
        assert bodies == [crlf(first)]
    else:
        # Accepted: then what was written must have reached the server.
        assert res == {"write": 0, "read": 0, "close": 0}, res
        assert crlf(first + b"appended line\n") in bodies, bodies


@pytest.mark.slow
def test_rename_while_lingering_send_runs(empty_dovecot, fs, proxy):
    """A rename of a temporary name that waits for the lingering send of
    that file must not give the dropped file a name again (the name table
    does not hold a reference: use after free at the next lookup)."""
    dv = empty_dovecot()
    c = dv.imap()
    px = proxy(dv.port)
    m = fs(dv, port=px.port)
    inbox = os.path.join(m, "INBOX")
    tmp = os.path.join(inbox, ".y.eml.Zx98Yw")
    write_file(tmp, make_msg("linger2"))
    px.hold_next("INBOX")
    _wait_held(px)
    res = {}

    def renamer():
        try:
            os.rename(tmp, os.path.join(inbox, "y.eml"))
            res["rename"] = 0
        except OSError as e:
            res["rename"] = e.errno
    t = threading.Thread(target=renamer)
    t.start()
    time.sleep(1.0)
    px.release()
    t.join(30)
    assert not t.is_alive()
    assert mids(c, "INBOX") == ["linger2@imapfuse.test"]
    # Look the names up a few times (a dangling entry would be used here).
    for _ in range(5):
        for n in ("y.eml", ".y.eml.Zx98Yw"):
            try:
                os.stat(os.path.join(inbox, n))
            except OSError:
                pass
        os.listdir(inbox)
    assert m.proc.poll() is None, "imapfuse died"


def test_append_reply_lost_after_the_idle_connection_died(empty_dovecot, fs, proxy):
    """The connection a cp was to use had died while idle (a server
    restart, a NAT timeout): its first command failed, which used up the
    one retry, so when the APPEND's reply was then lost too, close()
    failed (EIO) and the bytes went to the unsent directory although the
    message was stored.  A failure that never reached the server does not
    count: the retry finds the stored message, one copy, close() is 0."""
    dv = empty_dovecot()
    c = dv.imap()
    px = proxy(dv.port)
    m = fs(dv, port=px.port)
    write_file(os.path.join(m, "INBOX", "first.eml"), make_msg("first"))
    px.drop_all()  # the idle connection is dead now
    px.cut_after(b"OK [APPENDUID")
    data = make_msg("second")
    write_file(os.path.join(m, "INBOX", "second.eml"), data)
    assert px.cuts == 1
    bodies = [x["body"] for x in state(c, "INBOX").values()]
    assert bodies.count(crlf(data)) == 1 and len(bodies) == 2


def test_mv_when_the_flags_reply_is_cut_leaks_nothing(empty_dovecot, fs, proxy):
    """mv first asks for the message's flags.  The connection was cut after
    the FETCH answer came and before its tagged OK: mv went on on another
    connection, but the flags already taken were never freed (a
    LeakSanitizer report at unmount, which fails this test)."""
    dv = empty_dovecot()
    c = dv.imap()
    c.create("B")
    uid = imap_append(c, "INBOX", make_msg("mvcut"))
    px = proxy(dv.port)
    m = fs(dv, port=px.port)
    os.listdir(os.path.join(m, "B"))
    p = os.path.join(m, "INBOX", eml(uid))
    os.stat(p)
    px.cut_after(b"FLAGS ())\r\n")
    os.rename(p, os.path.join(m, "B", eml(uid)))
    assert px.cuts == 1
    assert [x["mid"] for x in state(c, "B").values()] == ["mvcut@imapfuse.test"]
    assert state(c, "INBOX") == {}


@pytest.mark.imapfuse_stderr_ok(r"were moved to")
def test_files_left_by_a_killed_mount_are_moved_to_unsent(empty_dovecot, fs, xdg):
    """kill -9 while a file is being written: its bytes stayed in the
    staging directory, with no word at the next mount (a fault-injection
    round found 250 such files after a killed cp of 300, most of them
    already stored, none told apart).  Each mount now writes into a run
    directory of its own, locked while it runs; the next mount moves what
    a dead run left to unsent/recovered-TIME-PID/ and says so."""
    dv = empty_dovecot()
    dv.imap().create("Sub/deep")
    m = fs(dv)
    # Stored, and still under their names (they linger 30 s) when the
    # mount is killed: they were recovered too, as "being written".
    for i in range(3):
        write_file(os.path.join(m, "INBOX", "s%d.eml" % i), make_msg("stored%d" % i))
    data = make_msg("killed")
    fd = os.open(os.path.join(m, "INBOX", "k.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, data)  # still open: nothing sent
    # A stored one being rewritten: its new bytes are not on the server.
    v2 = make_msg("stored0v2")
    fd2 = os.open(os.path.join(m, "INBOX", "s0.eml"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd2, v2)
    # Closed, but under rsync's temporary name (sent at its rename): whole.
    whole = make_msg("whole")
    write_file(os.path.join(m, "Sub", "deep", ".w.eml.Ab12Cd"), whole)
    # Open with no bytes yet: nothing to recover.
    fd3 = os.open(os.path.join(m, "INBOX", "empty.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    # A name too long for ".partial.eml" more, and one of dots only.
    long_name, dots = "x" * 246 + ".eml", "..."
    more = []
    for name in (long_name, dots):
        fdn = os.open(os.path.join(m, "INBOX", name), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fdn, make_msg(name[:8]))
        more.append(fdn)
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    m.finished = True
    for f in [fd, fd2, fd3] + more:
        try:
            os.close(f)
        except OSError:
            pass
    subprocess.run(["fusermount3", "-uz", m.path])
    m2 = fs(dv)
    assert "INBOX" in os.listdir(m2)
    kept = [x for x in unsent_files(xdg) if os.path.isfile(x)]
    assert len(kept) == 5 and all("/recovered-" in k for k in kept), kept
    # Under their folders and names; cut short (still open): NAME.partial.eml.
    named = {k.split("/recovered-", 1)[1].split("/", 1)[1]: open(k, "rb").read() for k in kept}
    assert named == {"INBOX/k.partial.eml": data, "INBOX/s0.partial.eml": v2,
                     "Sub/deep/w.eml.Ab12Cd.eml": whole,
                     "INBOX/" + "x" * 239 + ".partial.eml": make_msg(long_name[:8]),
                     "INBOX/message.partial.eml": make_msg(dots[:8])}, named
    assert re.search(r"\b5 file\(s\) being written .* were moved to", m2.stderr_text())
    m2.unmount()
    staging = os.path.join(xdg["XDG_DATA_HOME"], "imapfuse", "staging")
    assert [f for _, _, fs_ in os.walk(staging) for f in fs_] == []


@pytest.mark.imapfuse_stderr_ok(r"No space left on device", r"could not store", r"nor copy it")
def test_full_local_disk_is_enospc_not_the_servers_quota(empty_dovecot, fs, xdg):
    """New files are staged on the local disk.  When that disk was full,
    write() failed with EDQUOT, the errno of the server's quota
    ([OVERQUOTA]), and nothing said why.  It is ENOSPC, with a warning."""
    with small_tmpfs(xdg["XDG_DATA_HOME"], "512k"):
        dv = empty_dovecot()
        m = fs(dv)
        p = os.path.join(m, "INBOX", "big.eml")
        with pytest.raises(OSError) as e:
            with open(p, "wb") as f:
                for _ in range(64):
                    f.write(b"x" * 65536)
                    f.flush()
        assert e.value.errno == errno.ENOSPC, e.value
        m.unmount(check=False)
        assert "No space left on device" in m.stderr_text()


def _limited(tmp_path, nofile):
    """A wrapper that starts imapfuse with at most nofile descriptors."""
    w = tmp_path / "imapfuse-nofile.sh"
    w.write_text("#!/bin/sh\nulimit -n %d\nexec %s \"$@\"\n" % (
        nofile, os.path.join(build_dir(), "imapfuse")))
    w.chmod(0o755)
    return str(w)


@pytest.mark.imapfuse_stderr_ok(r"Too many open files")
def test_close_at_the_descriptor_limit_reports_what_was_not_stored(empty_dovecot, fs, xdg,
                                                                      tmp_path):
    """With the daemon out of file descriptors, the close() of a file it
    could not store returned 0 (it could not read /proc to tell which
    process closed, took it for another than the opener, and left the
    send to the release, whose error nobody sees).  Every close() that
    returns 0 now means the message is on the server; the others are kept
    in unsent/.  A create past the limit fails with EMFILE."""
    dv = empty_dovecot()
    c = dv.imap()
    m = fs(dv, binary=_limited(tmp_path, 40))
    box = os.path.join(m, "INBOX")
    open_files, datas = [], {}
    for i in range(80):
        try:
            fd = os.open(os.path.join(box, "w%d.eml" % i), os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as e:
            # The daemon's descriptors are used up: said so (it was EIO).
            assert e.errno == errno.EMFILE, e
            break
        datas[i] = make_msg("fd%d" % i)  # LF line ends: storing needs a file more
        os.write(fd, datas[i])
        open_files.append((i, fd))
    assert len(open_files) < 80, "the limit was never reached"
    closed_ok = []
    for i, fd in open_files:
        try:
            os.close(fd)
            closed_ok.append(i)
        except OSError:
            pass
    stored = {x["mid"] for x in state(c, "INBOX").values()}
    lost = [i for i in closed_ok if "fd%d@imapfuse.test" % i not in stored]
    assert not lost, "close() returned 0 but not stored: %s" % lost
    kept = [p for p in unsent_files(xdg) if os.path.isfile(p)]
    assert len(stored) + len(kept) >= len(open_files)


def _move_one_through(empty_dovecot, fs, proxy, op, tag, arm, caps=()):
    """mv of INBOX/<uid>.eml to B (op "mv"), or its rm with delete=trash
    ("rm_trash"), through a proxy that arm(px) prepares; checks that the
    message is in B (or the Trash) once and the other one stays."""
    dv = empty_dovecot(extra_config=capability_without(*caps) if caps else "")
    c = dv.imap()
    c.create("B")
    c.create("Trash")
    uid = imap_append(c, "INBOX", make_msg(tag))
    other = imap_append(c, "INBOX", make_msg("stays"))
    px = proxy(dv.port)
    m = fs(dv, *(["delete=trash"] if op == "rm_trash" else []), port=px.port)
    os.listdir(os.path.join(m, "B"))
    p = os.path.join(m, "INBOX", eml(uid))
    os.stat(p)
    arm(px)
    if op == "mv":
        os.rename(p, os.path.join(m, "B", eml(uid)))
    else:
        os.unlink(p)
    assert mids(c, "B" if op == "mv" else "Trash") == ["%s@imapfuse.test" % tag]
    assert sorted(state(c, "INBOX")) == [other]
    return px


@pytest.mark.parametrize("op", ["mv", "rm_trash"])
def test_move_without_copyuid_is_taken_at_its_expunge(empty_dovecot, fs, proxy, op):
    """A server with MOVE and UIDPLUS that sends no COPYUID for UID MOVE
    (a SHOULD in RFC 6851): mv (and rm to the Trash) moved the message and
    failed with ENOENT, since only COPYUID counted as moved.  The expunge
    of it reported with the OK counts now."""
    def strip(px):
        px.edit_s2c = lambda data: re.sub(rb" ?\[COPYUID [^\]]*\]", b"", data)
    _move_one_through(empty_dovecot, fs, proxy, op, "nocu", strip)


def test_rm_again_to_the_trash_after_an_undelete_copies_again(empty_dovecot, fs):
    """delete=trash without MOVE or UIDPLUS: a second rm of a message
    adds no second copy while the original is still \\Deleted, but if a
    mail client took the flag off meanwhile (and emptied the Trash), it is
    copied again: the second rm returned 0 and did nothing."""
    dv = empty_dovecot(extra_config=capability_without("UIDPLUS", "MOVE"))
    c = dv.imap()
    c.create("Trash")
    a = imap_append(c, "INBOX", make_msg("A"))
    m = fs(dv, "delete=trash")
    p = os.path.join(m, "INBOX", eml(a))
    os.unlink(p)
    assert mids(c, "Trash") == ["A@imapfuse.test"]
    c.select("INBOX")
    c.uid("STORE", str(a), "-FLAGS.SILENT", r"(\Deleted)")
    c.select("Trash")
    c.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
    c.expunge()
    os.unlink(p)
    assert mids(c, "Trash") == ["A@imapfuse.test"]
    assert "\\Deleted" in state(c, "INBOX")[a]["flags"]


@pytest.mark.parametrize("op", ["mv", "rm_trash"])
def test_move_without_uidplus_lost_reply_is_done(empty_dovecot, fs, proxy, op):
    """MOVE without UIDPLUS (UID MOVE sent after its own FETCH): the
    connection cut after the server moved the message failed the call
    with EIO.  The MOVE is sent again on another connection, where the
    message is gone: moved by the lost attempt, and the call returns 0."""
    px = _move_one_through(empty_dovecot, fs, proxy, op, "lostmove",
                           lambda px: px.cut_after(b"[COPYUID "), caps=("UIDPLUS",))
    assert px.cuts == 1


@pytest.mark.imapfuse_stderr_ok(r"warning: .*Temporary authentication failure")
def test_a_temporary_login_failure_is_not_a_refused_password(empty_dovecot, fs, proxy):
    """A login answered NO [UNAVAILABLE] (the server's own trouble) was
    taken for a refused password: no login for 30 s, so a 3 s outage shut
    the mount out for 30 (an adversarial test).  Only a refusal counts."""
    dv = empty_dovecot()
    c = dv.imap()
    uids = [imap_append(c, "INBOX", make_msg("u%d" % i)) for i in range(3)]
    px = proxy(dv.port)
    m = fs(dv, "poll=1", "cache=none", "readahead=0", port=px.port)
    inbox = os.path.join(m, "INBOX")
    assert sorted(os.listdir(inbox)) == sorted(eml(u) for u in uids)
    outage = [True]

    def unavailable(data):
        if outage[0] and re.search(rb"^\S+ OK .*Logged in", data, re.M):
            tag = data.split(b" ", 1)[0]
            return tag + b" NO [UNAVAILABLE] Temporary authentication failure.\r\n"
        return data
    px.edit_s2c = unavailable
    px.drop_all()
    with pytest.raises(OSError):
        with open(os.path.join(inbox, eml(uids[0])), "rb") as f:
            f.read()
    outage[0] = False
    time.sleep(1.5)  # well within the 30 s a refused login waits
    with open(os.path.join(inbox, eml(uids[1])), "rb") as f:
        assert b"u1@imapfuse.test" in f.read()

"""Read-path integration tests of imapfuse (issue 2).

Every check compares what the mount shows with an independent source: the
corpus manifest (built from the server's own FETCH answers and checked
against the bytes that were APPENDed) or a fresh imaplib connection.
Nothing is checked against imapfuse itself.

The session Dovecots (`dovecot`, `dovecot_tls`) are read-only here; tests
that change mail start their own server with `empty_dovecot`.
Each mount gets its own $XDG_CACHE_HOME so that runs never share a disk
cache (the default cache directory is keyed on USER@HOST:PORT only, and
ports are reused).
"""

import concurrent.futures
import errno
import hashlib
import os
import random
import re
import shutil
import stat
import subprocess
import time

import pytest

import corpus
from dovecot import imap_quote

MiB = 1 << 20


# ------------------------------------------------------------------ helpers

def escape_component(name):
    """A mailbox-name component as a directory name, exactly as documented
    in include/imapfuse/names.h (independent re-implementation)."""
    if name == "":
        return "%"
    out = []
    for i, ch in enumerate(name):
        o = ord(ch)
        if ch == "%" or ch == "/" or 0x01 <= o <= 0x1F or o == 0x7F:
            out.append("%%%02X" % o)
        elif i == 0 and ch == ".":
            out.append("%2E")
        else:
            out.append(ch)
    s = "".join(out)
    if re.fullmatch(r"[0-9]+\.eml", name):
        s = "%%%02X" % ord(name[0]) + s[1:]
    return s


def dir_of(logical_path):
    """Manifest logical path ("Archive/2024/Q1") -> path below the mount."""
    return "/".join(escape_component(c) for c in logical_path.split("/"))


def expected_dirs(man):
    out = set()
    for p in list(man.mailboxes) + list(man.noselect):
        parts = p.split("/")
        for i in range(1, len(parts) + 1):
            out.add(dir_of("/".join(parts[:i])))
    return out


def walk(root):
    """{directory relative to root: sorted [file names in it]}"""
    root = os.fspath(root)
    dirs = {}
    for d, subdirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel != ".":
            dirs[rel] = sorted(files)
    return dirs


def sha(b):
    return hashlib.sha256(b).hexdigest()


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def imap_bodies(server, imap_name, flags=False):
    """{uid: BODY.PEEK[] bytes} from an independent imaplib connection;
    with flags, {uid: (sorted flags but \\Recent, bytes)}."""
    c = server.imap()
    try:
        typ, data = c.select(imap_quote(imap_name), readonly=True)
        assert typ == "OK", data
        out = {}
        if int(data[0]):
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            assert typ == "OK", data
            for item in data:
                if isinstance(item, tuple):
                    uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                    out[uid] = item[1]
                    if flags:
                        # \Recent belongs to whichever session saw it first
                        f = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).split()
                        out[uid] = (sorted(set(f) - {rb"\Recent"}), item[1])
        c.close()
        return out
    finally:
        c.logout()


def imap_flags(server, man):
    """{(path, uid): flags} for every message, via imaplib (EXAMINE)."""
    c = server.imap()
    try:
        out = {}
        for path in man.mailboxes:
            _, listing = corpus.fetch_listing(c, man.imap_names[path])
            for e in listing:
                out[(path, e["uid"])] = e["flags"]
        return out
    finally:
        c.logout()


def manifest_flags(man):
    return {(p, m["uid"]): m["flags"] for p, ms in man.mailboxes.items()
            for m in ms}


def all_message_files(man, root):
    return [(p, m, os.path.join(root, dir_of(p), "%d.eml" % m["uid"]))
            for p, ms in man.mailboxes.items() for m in ms]


def uidvalidity(server, imap_name):
    c = server.imap()
    try:
        typ, data = c.status(imap_quote(imap_name), "(UIDVALIDITY)")
        assert typ == "OK", data
        return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    finally:
        c.logout()


TRACE_OK = (r"^imapfuse\[#\d+\] [CS]:", r"^    ", r"^imapfuse: debug:")


@pytest.fixture
def env(tmp_path):
    """Environment for imapfuse: a private, empty $XDG_CACHE_HOME."""
    d = tmp_path / "xdg-cache"
    d.mkdir()
    return dict(os.environ, XDG_CACHE_HOME=str(d), LC_ALL="C.UTF-8")


@pytest.fixture
def corpus_mount(mount, dovecot, env, rw_ro):
    """A mount of the session Dovecot (standard corpus), read-write (the
    default) and read-only (-o ro)."""
    return mount(dovecot, *rw_ro, env=env)


# ------------------------------------------------------------------ tree

def test_tree_matches_mailboxes(corpus_mount, manifest):
    tree = walk(corpus_mount)
    assert set(tree) == expected_dirs(manifest)
    # The names a user sees (UTF-8, spaces, '&', nesting).
    top = set(os.listdir(os.fsencode(corpus_mount.path)))
    for name in ("INBOX", "Réunions", "R&D", "Project Notes", "Archive",
                 "Parent", "Empty", "Unsubscribed"):
        assert name.encode("utf-8") in top, name
    assert b"R&AOk-unions" not in top and b"R&-D" not in top
    assert "Été 2024" in os.listdir(os.path.join(corpus_mount.path, "Réunions"))
    for d in ("Archive/2024/Q1", "Réunions/Été 2024", "Parent/Child"):
        assert stat.S_ISDIR(os.stat(os.path.join(corpus_mount.path, d)).st_mode), d
    # \Noselect parent: a directory with its child and no messages.
    assert os.listdir(os.path.join(corpus_mount.path, "Parent")) == ["Child"]
    # Empty mailboxes are empty directories.
    for p in ("Empty", "Trash"):
        assert manifest.messages(p) == []
        assert os.listdir(os.path.join(corpus_mount.path, p)) == []
    # Messages only where the manifest has them, directories as dirs.
    for rel, files in tree.items():
        for f in files:
            assert re.fullmatch(r"[1-9][0-9]*\.eml", f), (rel, f)
    # Nothing is a dot-directory (rg/find -name skip those).
    for rel in tree:
        for comp in rel.split("/"):
            assert not comp.startswith("."), rel


def test_statfs_reports_room(corpus_mount):
    """df: IMAP tells no free space; zero free made file managers refuse
    to copy into the mount, so plenty is reported (as sshfs does)."""
    st = os.statvfs(corpus_mount.path)
    assert st.f_bavail > 0 and st.f_blocks >= st.f_bavail and st.f_favail > 0
    assert st.f_namemax == 255


def test_escaped_names_slash_delimiter(mount, empty_dovecot, env):
    """Names that need the documented escapes, on a '/' server (Dovecot's
    listescape plugin lets it store them)."""
    dv = empty_dovecot(extra_config="mail_plugins = $mail_plugins listescape\n")
    names = {".hidden": "%2Ehidden", "1.eml": "%31.eml", "50%": "50%25",
             "a%2Fb": "a%252Fb", "Top/.dot": "Top/%2Edot"}
    c = dv.imap()
    for n in names:
        typ, data = c.create(imap_quote(n))
        assert typ == "OK", (n, data)
    msg = b"Subject: escaped\r\n\r\nin a dot folder\r\n"
    assert c.append(imap_quote(".hidden"), None, None, msg)[0] == "OK"
    c.logout()
    m = mount(dv, env=env)
    tree = walk(m)
    assert set(tree) == {"INBOX", "Top"} | set(names.values())
    for rel in tree:
        assert not any(c.startswith(".") for c in rel.split("/")), rel
    # The escaped "1.eml" directory is a directory, not a message.
    assert stat.S_ISDIR(os.stat(os.path.join(m.path, "%31.eml")).st_mode)
    assert tree["%2Ehidden"] == ["1.eml"]
    assert read_file(os.path.join(m.path, "%2Ehidden", "1.eml")) == msg


def test_dot_delimiter_and_slash_in_name(mount, empty_dovecot, env):
    dv = empty_dovecot(delimiter=".",
                       extra_config="mail_plugins = $mail_plugins listescape\n")
    c = dv.imap()
    boxes = ["Archive", "Archive.2024", "Archive.2024.Q1", "R&AOk-unions",
             "R&AOk-unions.&AMk-t&AOk- 2024", "Top", "Top.a/b",
             "Top.a/b.leaf", "x/y"]
    for n in boxes:
        typ, data = c.create(imap_quote(n))
        assert typ == "OK", (n, data)
    bodies = {}
    for i, n in enumerate(["Archive.2024.Q1", "Top.a/b.leaf", "x/y",
                           "R&AOk-unions.&AMk-t&AOk- 2024"]):
        b = (b"Subject: box %d\r\nX-Box: %s\r\n\r\n" % (i, n.encode()) +
             b"line\r\n" * (i + 1))
        assert c.append(imap_quote(n), None, None, b)[0] == "OK"
        bodies[n] = b
    c.logout()
    m = mount(dv, env=env)
    tree = walk(m)
    assert set(tree) == {"INBOX", "Archive", "Archive/2024",
                         "Archive/2024/Q1", "Réunions", "Réunions/Été 2024",
                         "Top", "Top/a%2Fb", "Top/a%2Fb/leaf", "x%2Fy"}
    where = {"Archive.2024.Q1": "Archive/2024/Q1",
             "Top.a/b.leaf": "Top/a%2Fb/leaf", "x/y": "x%2Fy",
             "R&AOk-unions.&AMk-t&AOk- 2024": "Réunions/Été 2024"}
    for n, rel in where.items():
        assert tree[rel] == ["1.eml"], rel
        p = os.path.join(m.path, rel, "1.eml")
        assert read_file(p) == bodies[n]
        assert os.stat(p).st_size == len(bodies[n])


def test_bracket_names_and_keywords(mount, empty_dovecot, env):
    """'[' and ']' are atom characters: Dovecot sends "a[b" unquoted in
    LIST and STATUS, and a keyword "$x[y" in FLAGS.  They used to fail the
    parser ("unterminated '['"), and with it the mount."""
    dv = empty_dovecot()
    msgs = [_msg("br%d" % i, 5 + i) for i in range(3)]
    a_uids = _make_box(dv, "a[b", msgs[:2])
    x_uids = _make_box(dv, "x]y[z", msgs[2:])
    c = dv.imap()
    c.select(imap_quote("a[b"))
    typ, data = c.uid("STORE", str(a_uids[0]), "+FLAGS", "($x[y)")
    assert typ == "OK", data
    typ, data = c.list()
    c.logout()
    assert any(l.endswith(b" a[b") for l in data), data  # sent unquoted

    m = mount(dv, env=env)
    # '[' and ']' are not escaped (README, "The mapping").
    tree = walk(m)
    assert tree == {"INBOX": [], "a[b": ["%d.eml" % u for u in a_uids],
                    "x]y[z": ["%d.eml" % x_uids[0]]}
    a = os.path.join(m.path, "a[b")
    assert read_file(os.path.join(a, "%d.eml" % a_uids[0])) == msgs[0]
    assert os.getxattr(os.path.join(a, "%d.eml" % a_uids[0]),
                       "user.imap.flags").split() == [b"$x[y"]
    new = _msg("into-a[b", 3)
    with open(os.path.join(a, "new.eml"), "wb") as f:
        f.write(new)
    os.unlink(os.path.join(m.path, "x]y[z", "%d.eml" % x_uids[0]))
    got = imap_bodies(dv, "a[b")
    assert sorted(got.values()) == sorted(msgs[:2] + [new])
    assert imap_bodies(dv, "x]y[z") == {}
    m.unmount()

    # A remount checks the saved listings with STATUS ("* STATUS a[b ...").
    m = mount(dv, env=env)
    assert sorted(os.listdir(os.path.join(m.path, "a[b"))) == \
        sorted("%d.eml" % u for u in got)
    assert os.listdir(os.path.join(m.path, "x]y[z")) == []


# ------------------------------------------------------------------ files

def test_files_match_server(corpus_mount, dovecot, manifest):
    tree = walk(corpus_mount)
    total = 0
    inos = {}
    for path, entries in manifest.mailboxes.items():
        d = dir_of(path)
        assert tree[d] == sorted("%d.eml" % e["uid"] for e in entries), path
        live = imap_bodies(dovecot, manifest.imap_names[path])
        assert sorted(live) == [e["uid"] for e in entries], path
        for e in entries:
            p = os.path.join(corpus_mount.path, d, "%d.eml" % e["uid"])
            st = os.stat(p)
            assert stat.S_ISREG(st.st_mode), p
            assert st.st_size == e["size"], p
            assert st.st_mtime == e["mtime"], (p, st.st_mtime, e)
            data = read_file(p)
            assert len(data) == e["size"], p
            assert sha(data) == e["sha256"], p
            assert data == live[e["uid"]], p
            assert st.st_ino not in inos, (p, inos.get(st.st_ino))
            inos[st.st_ino] = p
            total += 1
    assert total == manifest.total_messages
    # Inode numbers are stable while mounted.
    for ino, p in list(inos.items())[::25]:
        assert os.stat(p).st_ino == ino, p


def test_large_and_8bit_messages(corpus_mount, manifest):
    path, big = manifest.largest()
    assert big["size"] > 4_800_000
    p = os.path.join(corpus_mount.path, dir_of(path), "%d.eml" % big["uid"])
    assert os.stat(p).st_size == big["size"]
    data = read_file(p)
    assert data == manifest.raw(path, big["uid"])
    # cp keeps every byte.
    dst = os.path.join(os.path.dirname(corpus_mount.path), "imapfuse-cp-%d.eml" %
                       os.getpid())
    try:
        subprocess.run(["cp", p, dst], check=True)
        assert sha(read_file(dst)) == big["sha256"]
    finally:
        os.unlink(dst)
    # Raw 8-bit bodies (Latin-1, UTF-8) and the raw 8-bit header.
    kinds = set()
    for e in manifest.messages("Encodings"):
        raw = manifest.raw("Encodings", e["uid"])
        got = read_file(os.path.join(corpus_mount.path, "Encodings",
                                     "%d.eml" % e["uid"]))
        assert got == raw, e["uid"]
        if any(b > 0x7F for b in raw):
            kinds.add(e["kind"])
    assert {"latin1", "utf8", "raw8bit-header"} <= kinds


def test_ls_l_and_stat_do_not_download(mount, dovecot, manifest, env):
    """ls -l lists sizes from one FETCH per mailbox: no body is fetched and
    no per-message command is sent (checked on the IMAP trace)."""
    m = mount(dovecot, "imap_debug", "cache=none", env=env,
              allow_stderr=TRACE_OK)
    inbox = manifest.messages("INBOX")
    r = subprocess.run(["ls", "-l", "--time-style=+%s",
                        os.path.join(m.path, "INBOX")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    sizes = {}
    for line in r.stdout.splitlines()[1:]:
        f = line.split()
        sizes[f[-1]] = (int(f[4]), int(f[5]))
    assert sizes == {"%d.eml" % e["uid"]: (e["size"], int(e["mtime"]))
                     for e in inbox}
    for e in inbox:
        os.stat(os.path.join(m.path, "INBOX", "%d.eml" % e["uid"]))
    time.sleep(0.2)
    cmds = re.findall(r"^imapfuse\[#\d+\] C: \S+ (.*)$", m.stderr_text(),
                      re.M)
    fetches = [c for c in cmds if re.search(r"\bFETCH\b", c, re.I)]
    assert not [c for c in fetches if "BODY" in c.upper()], fetches
    # One listing for the mailbox, not one command per message.
    assert 1 <= len(fetches) <= 3, fetches
    assert all("1:*" in c for c in fetches), fetches
    assert len(cmds) < 40, cmds


# ------------------------------------------------------------------ partial

def _body_fetches(trace, uid):
    """(bytes asked for by partial fetches, [whole-body fetch commands])"""
    fetched, whole = 0, []
    for mm in re.finditer(r"^imapfuse\[#\d+\] C: \S+ UID FETCH %d "
                          r"BODY\.PEEK\[\](?:<(\d+)\.(\d+)>)?" % uid,
                          trace, re.M):
        if mm.group(1) is None:
            whole.append(mm.group(0))
        else:
            fetched += int(mm.group(2))
    return fetched, whole


def test_partial_reads_of_large_message(mount, dovecot, manifest, env, rw_ro):
    m = mount(dovecot, "imap_debug", "cache=none", "readahead=0", *rw_ro, env=env,
              allow_stderr=TRACE_OK)
    path, big = manifest.largest()
    raw = manifest.raw(path, big["uid"])
    size = len(raw)
    p = os.path.join(m.path, dir_of(path), "%d.eml" % big["uid"])
    # head -c 100 does not download the whole message.
    r = subprocess.run(["head", "-c", "100", p], stdout=subprocess.PIPE)
    assert r.returncode == 0 and r.stdout == raw[:100]
    time.sleep(0.2)
    fetched, whole = _body_fetches(m.stderr_text(), big["uid"])
    assert not whole, whole
    assert 100 <= fetched <= size // 2, fetched
    # Reads at any offset give exactly the right bytes.
    fd = os.open(p, os.O_RDONLY)
    try:
        for off in (size - 100, size - 37, size - 1, 0, 1, size // 2,
                    MiB - 50, 3 * MiB - 1, 4 * MiB + 12345):
            assert os.pread(fd, 100, off) == raw[off:off + 100], off
        assert os.pread(fd, 100, size) == b""
        assert os.pread(fd, 100, size + 12345) == b""
        assert os.pread(fd, 3 * MiB, MiB // 3) == raw[MiB // 3:MiB // 3 +
                                                       3 * MiB]
    finally:
        os.close(fd)
    time.sleep(0.2)
    fetched, whole = _body_fetches(m.stderr_text(), big["uid"])
    assert not whole, whole


# ------------------------------------------------------------------ search

def test_grep_finds_exactly_the_needles(corpus_mount, manifest, env):
    path, big = manifest.largest()
    chosen = list(big["needles"])
    chosen += [n for n, loc in manifest.needles.items()
               if loc[0] in ("Encodings", "Réunions", "Parent/Child",
                             "Réunions/Été 2024", "R&D")][:6]
    assert len(chosen) >= 6

    def where(n):
        p, uid = manifest.needles[n]
        return os.path.join(corpus_mount.path, dir_of(p), "%d.eml" % uid)

    for n in chosen:
        r = subprocess.run(["grep", "-rl", n, corpus_mount.path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().splitlines() == [where(n)], n
    # All needles at once.
    args = []
    for n in manifest.needles:
        args += ["-e", n]
    r = subprocess.run(["grep", "-rlF"] + args + [corpus_mount.path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.decode().splitlines()) == {
        where(n) for n in manifest.needles}
    r = subprocess.run(["grep", "-rl", "needle-0000000000000000", corpus_mount.path],
                       stdout=subprocess.PIPE, env=env)
    assert r.returncode == 1 and r.stdout == b""


def test_ripgrep_finds_the_needles(corpus_mount, manifest, env):
    rg = shutil.which("rg")
    if rg is None:
        pytest.skip("ripgrep not installed")
    args = []
    for n in manifest.needles:
        args += ["-e", n]
    r = subprocess.run([rg, "--no-config", "-l", "-F"] + args + [corpus_mount.path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.decode().splitlines()) == {
        os.path.join(corpus_mount.path, dir_of(p), "%d.eml" % uid)
        for p, uid in manifest.needles.values()}


def test_find_size(corpus_mount, manifest, env):
    r = subprocess.run(["find", corpus_mount.path, "-type", "f", "-size", "+1M"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env)
    assert r.returncode == 0, r.stderr
    want = {os.path.join(corpus_mount.path, dir_of(p), "%d.eml" % m["uid"])
            for p, m in manifest.find(lambda p, m: m["size"] > MiB)}
    assert len(want) >= 1
    assert set(r.stdout.decode().splitlines()) == want
    r = subprocess.run(["find", corpus_mount.path, "-type", "f", "-name", "*.eml"],
                       stdout=subprocess.PIPE, env=env)
    assert len(r.stdout.decode().splitlines()) == manifest.total_messages


# ------------------------------------------------------------------ \Seen

def test_seen_unchanged_after_reading_everything(corpus_mount, dovecot, manifest, env):
    before = imap_flags(dovecot, manifest)
    assert before == manifest_flags(manifest)
    # ls -lR and stat of everything
    r = subprocess.run(["ls", "-lR", corpus_mount.path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b".eml") == manifest.total_messages
    for _, m, p in all_message_files(manifest, corpus_mount.path):
        assert os.stat(p).st_size == m["size"]
    assert imap_flags(dovecot, manifest) == before
    # cat everything
    r = subprocess.run(["bash", "-c", 'set -o pipefail; '
                        'find "$1" -type f -exec cat {} + | wc -c', "-",
                        corpus_mount.path], stdout=subprocess.PIPE, env=env)
    assert r.returncode == 0
    assert int(r.stdout) == manifest.total_bytes
    total = 0
    for _, m, p in all_message_files(manifest, corpus_mount.path):
        total += len(read_file(p))
    assert total == manifest.total_bytes
    assert imap_flags(dovecot, manifest) == before


# ------------------------------------------------------------------ threads

def test_parallel_readers(mount, dovecot, manifest, env):
    m = mount(dovecot, "cache=none", "connections=4", env=env)
    boxes = ["INBOX", "Archive/2023", "Archive/2024/Q1", "Project Notes",
             "Encodings", "Attachments", "Réunions", "Sent", "Parent/Child",
             "R&D"]
    path, big = manifest.largest()
    raw_big = manifest.raw(path, big["uid"])
    pbig = os.path.join(m.path, dir_of(path), "%d.eml" % big["uid"])

    def read_box(box):
        bad = []
        for e in manifest.messages(box):
            p = os.path.join(m.path, dir_of(box), "%d.eml" % e["uid"])
            data = read_file(p)
            if sha(data) != e["sha256"]:
                bad.append((p, len(data), e["size"]))
        return bad

    def read_big_random(seed):
        rng = random.Random(seed)
        bad = []
        fd = os.open(pbig, os.O_RDONLY)
        try:
            for _ in range(40):
                off = rng.randrange(len(raw_big))
                n = rng.choice([1, 100, 4096, 70000, 300000])
                if os.pread(fd, n, off) != raw_big[off:off + n]:
                    bad.append((off, n))
        finally:
            os.close(fd)
        return bad

    with concurrent.futures.ThreadPoolExecutor(len(boxes) + 3) as ex:
        futs = [ex.submit(read_box, b) for b in boxes]
        futs += [ex.submit(read_big_random, s) for s in range(3)]
        bad = [x for f in futs for x in f.result(timeout=120)]
    assert bad == []


# ------------------------------------------------------------------ changes

def _make_box(dv, name, msgs):
    c = dv.imap()
    try:
        typ, data = c.create(imap_quote(name))
        assert typ == "OK", data
        uids = []
        for b in msgs:
            typ, data = c.append(imap_quote(name), None, None, b)
            assert typ == "OK", data
            uids.append(int(re.search(rb"APPENDUID \d+ (\d+)",
                                      data[0]).group(1)))
        return uids
    finally:
        c.logout()


def _msg(tag, n):
    return (b"Subject: %s\r\nMessage-ID: <%s@imapfuse.test>\r\n\r\n" % (
        tag.encode(), tag.encode()) +
        (b"%s body line\r\n" % tag.encode()) * n)


def _server_state(dv):
    """{mailbox: {uid: (flags, bytes)}} from an independent connection."""
    c = dv.imap()
    try:
        typ, data = c.list()
        assert typ == "OK", data
        names = sorted(re.search(rb'\) (?:"[^"]*"|NIL) "?([^"]*)"?$', l).group(1).decode()
                       for l in data)
    finally:
        c.logout()
    return {name: imap_bodies(dv, name, flags=True) for name in names}


def test_read_only_mount_refuses_changes(mount, empty_dovecot, env):
    """-o ro: every change fails with EROFS and the server is left exactly
    as it was; reading still works (without OPEN requests: fs_open)."""
    dv = empty_dovecot()
    msgs = [_msg("ro%d" % i, 20 + 100 * i) for i in range(3)]
    uids = _make_box(dv, "Box", msgs)
    _make_box(dv, "Other", [])
    before = _server_state(dv)
    m = mount(dv, "ro", env=env)
    d = os.path.join(m.path, "Box")
    first = os.path.join(d, "%d.eml" % uids[0])
    attempts = {
        "create": lambda: open(os.path.join(d, "new.eml"), "wb").close(),
        "write": lambda: open(first, "r+b").close(),
        "truncate": lambda: os.truncate(first, 0),
        "unlink": lambda: os.unlink(first),
        "rename": lambda: os.rename(first, os.path.join(m.path, "Other", "x.eml")),
        "mkdir": lambda: os.mkdir(os.path.join(m.path, "New")),
        "rmdir": lambda: os.rmdir(os.path.join(m.path, "Other")),
        "rename dir": lambda: os.rename(os.path.join(m.path, "Other"),
                                        os.path.join(m.path, "Renamed")),
        "set flags": lambda: os.setxattr(first, "user.imap.flags", b"\\Flagged"),
        "utime": lambda: os.utime(first, (1, 1)),
    }
    for what, f in attempts.items():
        with pytest.raises(OSError) as ei:
            f()
        assert ei.value.errno == errno.EROFS, (what, ei.value)
    for u, b in zip(uids, msgs):
        assert read_file(os.path.join(d, "%d.eml" % u)) == b
    assert sorted(os.listdir(m.path)) == ["Box", "INBOX", "Other"]
    assert _server_state(dv) == before


def test_expunge_by_another_client(mount, empty_dovecot, env, rw_ro):
    dv = empty_dovecot()
    msgs = [_msg("m%d" % i, 50 + i * 300) for i in range(4)]
    uids = _make_box(dv, "Box", msgs)
    m = mount(dv, "list_max_age=0", *rw_ro, env=env)  # every opendir asks
    d = os.path.join(m.path, "Box")
    assert sorted(os.listdir(d)) == sorted("%d.eml" % u for u in uids)
    gone, gone_unread = uids[1], uids[2]
    assert read_file(os.path.join(d, "%d.eml" % gone)) == msgs[1]
    fd_unread = os.open(os.path.join(d, "%d.eml" % gone_unread), os.O_RDONLY)
    try:
        c = dv.imap()
        c.select("Box")
        c.uid("STORE", "%d,%d" % (gone, gone_unread), "+FLAGS.SILENT",
              r"(\Deleted)")
        assert c.expunge()[0] == "OK"
        c.logout()

        assert sorted(os.listdir(d)) == sorted("%d.eml" % u for u in
                                               (uids[0], uids[3]))
        for u in (gone, gone_unread):
            with pytest.raises(OSError) as ei:
                read_file(os.path.join(d, "%d.eml" % u))
            assert ei.value.errno in (errno.ENOENT, errno.ESTALE), ei.value
        # A handle opened before the expunge gives an error or the
        # message's own bytes (if they were already fetched), never bytes
        # of another message.
        try:
            got = os.pread(fd_unread, 1 << 16, 0)
        except OSError as e:
            assert e.errno in (errno.ENOENT, errno.ESTALE), e
        else:
            assert got == msgs[2], "read of an expunged message gave " \
                "%d wrong bytes" % len(got)
        for u, b in ((uids[0], msgs[0]), (uids[3], msgs[3])):
            p = os.path.join(d, "%d.eml" % u)
            assert os.stat(p).st_size == len(b)
            assert read_file(p) == b
    finally:
        os.close(fd_unread)


def test_append_by_another_client(mount, empty_dovecot, env):
    dv = empty_dovecot()
    msgs = [_msg("m%d" % i, 50 + i * 300) for i in range(3)]
    uids = _make_box(dv, "Box", msgs)
    m = mount(dv, "list_max_age=0", env=env)  # every opendir asks
    d = os.path.join(m.path, "Box")
    assert sorted(os.listdir(d)) == sorted("%d.eml" % u for u in uids)
    assert read_file(os.path.join(d, "%d.eml" % uids[0])) == msgs[0]
    new = _msg("new-arrival", 777)
    c = dv.imap()
    typ, data = c.append("Box", None, None, new)
    assert typ == "OK", data
    new_uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    c.logout()
    # The next listing shows it, with the right size and bytes.
    assert sorted(os.listdir(d)) == sorted("%d.eml" % u
                                           for u in uids + [new_uid])
    p = os.path.join(d, "%d.eml" % new_uid)
    assert os.stat(p).st_size == len(new)
    assert read_file(p) == new


def _recreate_box(dv, name, msgs):
    """Another client: DELETE the mailbox, CREATE it again with the same
    name and APPEND msgs. Returns (new uids, old UIDVALIDITY, new one)."""
    uv_old = uidvalidity(dv, name)
    c = dv.imap()
    assert c.delete(imap_quote(name))[0] == "OK"
    c.logout()
    time.sleep(1.1)  # Dovecot's UIDVALIDITY is time based
    uids = _make_box(dv, name, msgs)
    uv_new = uidvalidity(dv, name)
    assert uv_new != uv_old
    return uids, uv_old, uv_new


# Dovecot drops a session whose selected mailbox was deleted; imapfuse may
# say so on stderr.
CLOSED_OK = r"(?i)warning: .*(closed the connection|deleted|BYE|reconnect)"


@pytest.mark.imapfuse_stderr_ok(CLOSED_OK)
def test_uidvalidity_change(mount, empty_dovecot, env):
    dv = empty_dovecot()
    old = [_msg("old-%d" % i, 40 + 2000 * i) for i in range(3)]
    uids = _make_box(dv, "Box", old)
    m = mount(dv, "list_max_age=0", env=env)  # every opendir asks
    d = os.path.join(m.path, "Box")
    assert sorted(os.listdir(d)) == sorted("%d.eml" % u for u in uids)
    # Read the old messages in parallel (as a grep -r or a file manager
    # would), so that several pooled connections have "Box" selected.
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        got = list(ex.map(lambda u: read_file(os.path.join(
            d, "%d.eml" % u)), uids))
    assert got == old

    new = [_msg("NEW-%d" % i, 300 + 70 * i) for i in range(4)]
    new_uids, _, _ = _recreate_box(dv, "Box", new)
    assert new_uids[:3] == uids  # same UIDs, other messages
    time.sleep(1.2)  # past dir_timeout

    assert sorted(os.listdir(d)) == sorted("%d.eml" % u for u in new_uids)
    for u, b in zip(new_uids, new):
        p = os.path.join(d, "%d.eml" % u)
        assert os.stat(p).st_size == len(b), u
        assert read_file(p) == b, u


@pytest.mark.imapfuse_stderr_ok(CLOSED_OK)
def test_uidvalidity_change_old_handles(mount, empty_dovecot, env, rw_ro):
    """Handles opened before the mailbox was replaced give an error (the
    message they named is gone), never bytes of the new messages."""
    dv = empty_dovecot()
    old = [_msg("old-%d" % i, 40 + 5000 * i) for i in range(3)]
    uids = _make_box(dv, "Box", old)
    # No read-ahead: opening the last file starts one, which may fetch the
    # "never read" message's own (old) bytes before the change; serving
    # those would be right, but this is about what must come from the server.
    m = mount(dv, "readahead=0", *rw_ro, env=env)
    d = os.path.join(m.path, "Box")
    assert sorted(os.listdir(d)) == sorted("%d.eml" % u for u in uids)
    fd_read = os.open(os.path.join(d, "%d.eml" % uids[1]), os.O_RDONLY)
    fd_unread = os.open(os.path.join(d, "%d.eml" % uids[2]), os.O_RDONLY)
    try:
        assert os.pread(fd_read, 1 << 20, 0) == old[1]
        new = [_msg("NEW-%d" % i, 300 + 70 * i) for i in range(4)]
        new_uids, _, _ = _recreate_box(dv, "Box", new)
        assert new_uids[:3] == uids
        time.sleep(1.2)
        outcome = {}
        for name, fd, mine in (("read before", fd_read, old[1]),
                               ("never read", fd_unread, old[2])):
            try:
                b = os.pread(fd, 1 << 16, len(mine) // 2)
            except OSError as e:
                outcome[name] = errno.errorcode.get(e.errno, e.errno)
            else:
                assert not any(b and b in n for n in new), \
                    "%s: stale handle returned bytes of a new message" % name
                outcome[name] = "old bytes" \
                    if b == mine[len(mine) // 2:][:1 << 16] else \
                    "%d wrong bytes" % len(b)
        ok = ("ENOENT", "ESTALE")
        # Pages read before the change may still be in the kernel's page
        # cache for that handle (the message's own bytes); anything that
        # has to come from imapfuse must be an error.
        assert outcome["read before"] in ok + ("old bytes",), outcome
        assert outcome["never read"] in ok, outcome
    finally:
        os.close(fd_read)
        os.close(fd_unread)


# ------------------------------------------------------------------ TLS

def _tls_login_lines(dv):
    with open(dv.log_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return [l for l in text.splitlines() if re.search(r"imap-login: (Info: )?Login:", l)]


def _check_some_files(m, man):
    path, big = man.largest()
    n = 0
    for p in ("Réunions/Été 2024", "Encodings", path):
        for e in man.messages(p):
            f = os.path.join(m.path, dir_of(p), "%d.eml" % e["uid"])
            assert os.stat(f).st_size == e["size"]
            assert sha(read_file(f)) == e["sha256"], f
            n += 1
    assert n > 30
    assert set(walk(m)) == expected_dirs(man)


def test_imaps_with_cafile(mount, dovecot_tls, tls_manifest, env):
    before = len(_tls_login_lines(dovecot_tls))
    m = mount(dovecot_tls, "cafile=" + dovecot_tls.cafile, scheme="imaps",
              tls=None, env=env)
    _check_some_files(m, tls_manifest)
    new = _tls_login_lines(dovecot_tls)[before:]
    assert new and all("TLS" in l for l in new), new


def test_starttls_with_cafile(mount, dovecot_tls, tls_manifest, env):
    before = len(_tls_login_lines(dovecot_tls))
    m = mount(dovecot_tls, "cafile=" + dovecot_tls.cafile, scheme="imap",
              tls=None, env=env)
    _check_some_files(m, tls_manifest)
    new = _tls_login_lines(dovecot_tls)[before:]
    assert new and all("TLS" in l for l in new), new


def test_tls_off_loopback_no_warning(mount, dovecot, manifest, env):
    m = mount(dovecot, tls="off", env=env)
    assert len(os.listdir(os.path.join(m.path, "INBOX"))) == len(
        manifest.messages("INBOX"))
    m.unmount()
    assert m.returncode == 0
    assert "warning" not in m.stderr_text().lower(), m.stderr_text()
    # "localhost" is loopback too (and must reach the IPv4 listener).
    m2 = mount(dovecot, tls="off", env=env,
               url="imap://%s@localhost:%d" % (dovecot.user, dovecot.port))
    assert len(os.listdir(os.path.join(m2.path, "INBOX"))) == len(
        manifest.messages("INBOX"))
    m2.unmount()
    assert "warning" not in m2.stderr_text().lower(), m2.stderr_text()

"""Tests of the integration-test harness itself (no imapfuse needed).

The mount machinery is exercised with a tiny stand-in FUSE program that is
compiled here from the C source below (skipped without cc/libfuse3-dev).
"""

import collections
import hashlib
import imaplib
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest

import corpus
import dovecot as dovecot_mod
from dovecot import Dovecot, capability_without, QUOTA_CONFIG

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable


def is_mounted(path):
    path = os.path.realpath(os.fspath(path))
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def q(name):
    return dovecot_mod.imap_quote(name)


def prelogin_caps(c):
    return set(c.capabilities)


def caps(c):
    typ, data = c.capability()
    assert typ == "OK"
    return set(data[0].decode().split())


# ------------------------------------------------------------------ servers

def test_plain_server_starts(dovecot):
    assert dovecot.host == "127.0.0.1"
    assert dovecot.running and dovecot.port and dovecot.tls_port is None
    c = dovecot.connect()
    pre = prelogin_caps(c)
    assert "STARTTLS" not in pre and "LOGINDISABLED" not in pre
    c.login(dovecot.user, dovecot.password)
    post = caps(c)
    assert {"IMAP4REV1", "UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC", "IDLE",
            "LITERAL+", "SPECIAL-USE"} <= {x.upper() for x in post}
    # The documented default list is what the server really advertises.
    assert set(dovecot_mod.DEFAULT_CAPABILITIES) == post
    c.logout()
    assert dovecot.log_errors() == []


# Comparisons involving passwords are done into booleans first, so that a
# failing assert cannot show a password in the test output.

def test_repr_and_errors_hide_password(dovecot):
    leaked = dovecot.password in repr(dovecot)
    assert not leaked
    with pytest.raises(dovecot_mod.DovecotError) as ei:
        dovecot.users["nobody"] = "wrong-" + dovecot.password
        try:
            dovecot.imap(user="nobody")
        finally:
            del dovecot.users["nobody"]
    leaked = dovecot.password in str(ei.value)
    assert not leaked


def test_startup_errors_are_clear():
    with pytest.raises(dovecot_mod.DovecotError) as ei:
        Dovecot(extra_config="no_such_setting = 1")
    assert "Unknown setting: no_such_setting" in str(ei.value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(dovecot_mod.DovecotError) as ei:
            Dovecot(port=s.getsockname()[1])
        assert "Address already in use" in str(ei.value)


def test_password_file(dovecot, tmp_path):
    p = dovecot.write_password_file()
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o600
    with open(p) as f:
        same = f.read() == dovecot.password  # no trailing newline
    assert same
    p2 = dovecot.write_password_file(str(tmp_path / "pw"))
    assert stat.S_IMODE(os.stat(p2).st_mode) == 0o600
    # password_command='cat FILE' as a shell would run it:
    out = subprocess.run("cat " + p2, shell=True, stdout=subprocess.PIPE)
    same = out.stdout.decode() == dovecot.password
    assert same


def test_tls_imaps_trusting_test_ca(dovecot_tls):
    dv = dovecot_tls
    assert dv.tls_port and dv.tls_port != dv.port
    ctx = ssl.create_default_context(cafile=dv.cafile)
    c = imaplib.IMAP4_SSL("127.0.0.1", dv.tls_port, ssl_context=ctx,
                          timeout=10)
    assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    c.login(dv.user, dv.password)
    assert c.select("INBOX", readonly=True)[0] == "OK"
    c.logout()
    # SAN DNS:localhost too.
    c = imaplib.IMAP4_SSL("localhost", dv.tls_port, ssl_context=ctx,
                          timeout=10)
    c.logout()
    c = dv.imap(mode="imaps")
    c.logout()


def test_tls_without_test_ca_fails(dovecot_tls):
    dv = dovecot_tls
    ctx = ssl.create_default_context()  # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("127.0.0.1", dv.tls_port, ssl_context=ctx,
                          timeout=10)
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts nothing
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("127.0.0.1", dv.tls_port, ssl_context=bare,
                          timeout=10)


def test_tls_cert_properties(dovecot_tls):
    out = subprocess.run(["openssl", "x509", "-in", dovecot_tls.certfile,
                          "-noout", "-text"], stdout=subprocess.PIPE,
                         check=True).stdout.decode()
    assert "DNS:localhost" in out and "IP Address:127.0.0.1" in out
    assert "CA:FALSE" in out
    r = subprocess.run(["openssl", "verify", "-CAfile", dovecot_tls.cafile,
                        dovecot_tls.certfile], stdout=subprocess.PIPE)
    assert r.returncode == 0


def test_tls_wrong_hostname_cert(empty_dovecot):
    dv = empty_dovecot(tls=True, san=("DNS:other.test",))
    ctx = dv.ssl_context()
    with pytest.raises(ssl.SSLCertVerificationError) as ei:
        imaplib.IMAP4_SSL("127.0.0.1", dv.tls_port, ssl_context=ctx,
                          timeout=10)
    assert "mismatch" in str(ei.value).lower() or \
        "match" in str(ei.value).lower()


def test_starttls(dovecot_tls):
    dv = dovecot_tls
    c = imaplib.IMAP4(dv.host, dv.port, timeout=10)
    assert "STARTTLS" in prelogin_caps(c)
    c.starttls(ssl_context=dv.ssl_context())
    assert isinstance(c.sock, ssl.SSLSocket)
    c.login(dv.user, dv.password)
    c.logout()
    # Plaintext LOGIN on the plain port is allowed for tests.
    c = dv.imap(mode="plain")
    c.logout()
    # STARTTLS without the CA fails verification.
    c = imaplib.IMAP4(dv.host, dv.port, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        c.starttls(ssl_context=ssl.create_default_context())
    try:
        c.shutdown()
    except OSError:
        pass


def test_ipv6_listener(empty_dovecot):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 here")
    dv = empty_dovecot(ipv6=True)
    c = imaplib.IMAP4("::1", dv.port, timeout=10)
    c.login(dv.user, dv.password)
    c.logout()


def test_several_users_and_tricky_password(empty_dovecot):
    users = {"alice": "pa55-alice", "bob": 'p a"s\\s w%rd{}'}
    dv = empty_dovecot(users=users)
    assert dv.user == "alice"
    for u in users:
        c = dv.imap(user=u)
        c.create(q("Mine-" + u))
        c.logout()
    c = dv.imap(user="bob")
    names = corpus.list_mailboxes(c)
    assert "Mine-bob" in names and "Mine-alice" not in names
    c.logout()
    with open(dv.write_password_file(user="bob")) as f:
        assert f.read() == users["bob"]


def test_stop_leaves_nothing(empty_dovecot):
    dv = empty_dovecot()
    c = dv.imap()  # an open session: its imap process must die too
    root, port, pid = dv.root, dv.port, dv.proc.pid
    dv.close()
    assert not dv.running
    assert dovecot_mod._live_group_members(pid) == []
    assert dv._pids_using_root() == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not os.path.exists(root)
    try:
        c.shutdown()
    except OSError:
        pass


def test_restart_keeps_port_and_mail(empty_dovecot):
    dv = empty_dovecot()
    needles = corpus.plant_needles(dv, "Keep", n=2)
    port = dv.port
    dv.restart()
    assert dv.port == port
    c = dv.imap()
    typ, data = c.select(q("Keep"), readonly=True)
    assert typ == "OK" and int(data[0]) == 2
    c.logout()
    assert len(needles) == 2


def test_kick_disconnects_sessions(empty_dovecot):
    dv = empty_dovecot()
    c = dv.imap()
    c.select("INBOX")
    r = dv.kick()
    assert r.returncode == 0, r.stderr
    with pytest.raises((imaplib.IMAP4.abort, OSError, EOFError)):
        for _ in range(50):
            c.noop()
            time.sleep(0.05)


def test_capability_trimming(empty_dovecot):
    dv = empty_dovecot(extra_config=capability_without("UIDPLUS", "MOVE"))
    c = dv.imap()
    post = caps(c)
    assert "UIDPLUS" not in post and "MOVE" not in post
    assert "IMAP4rev1" in post and "IDLE" in post
    c.logout()
    c = dv.connect()
    assert "UIDPLUS" not in prelogin_caps(c)
    c.shutdown()


def test_quota_config(empty_dovecot):
    dv = empty_dovecot(extra_config=QUOTA_CONFIG("200K"))
    c = dv.imap()
    assert "QUOTA" in caps(c)
    msg = b"Subject: big\r\n\r\n" + b"x" * 76 + b"\r\n"
    typ, data = c.append("INBOX", None, None, msg * 4000)  # ~312 KB
    assert typ == "NO" and b"OVERQUOTA" in data[0], data
    typ, data = c.append("INBOX", None, None, msg * 10)
    assert typ == "OK"
    c.logout()


def test_log_tail_and_diagnostics(empty_dovecot):
    dv = empty_dovecot()
    c = dv.connect()
    with pytest.raises(imaplib.IMAP4.error):
        c.login(dv.user, "wrong-password")
    c.shutdown()
    text = dv.diagnostics()
    assert dv.root in text and "dovecot.log" in text
    leaked = dv.password in text
    assert not leaked


# ------------------------------------------------------------------ corpus

def test_mutf7():
    cases = {
        "Réunions": "R&AOk-unions",
        "R&D": "R&-D",
        "Été 2024": "&AMk-t&AOk- 2024",
        "~peter/mail/台北/日本語": "~peter/mail/&U,BTFw-/&ZeVnLIqe-",
        "&": "&-",
        "a&b&": "a&-b&-",
        "😀": "&2D3eAA-",
        "plain ASCII": "plain ASCII",
    }
    for uni, enc in cases.items():
        assert corpus.mutf7_encode(uni) == enc
        assert corpus.mutf7_decode(enc) == uni
    assert corpus.to_imap_name("Réunions/Été 2024", ".") == \
        "R&AOk-unions.&AMk-t&AOk- 2024"
    with pytest.raises(ValueError):
        corpus.mutf7_decode("R&AOk")


def test_standard_corpus_is_deterministic():
    a = corpus.build_standard_corpus(seed=1)
    b = corpus.build_standard_corpus(seed=1)
    da = [m.data for ms in a.folders.values() for m in ms]
    db = [m.data for ms in b.folders.values() for m in ms]
    assert da == db and a.needles == b.needles
    c = corpus.build_standard_corpus(seed=2)
    assert [m.data for ms in c.folders.values() for m in ms] != da


def test_manifest_matches_server(dovecot, manifest):
    c = dovecot.imap()
    listed = corpus.list_mailboxes(c)
    expected = set(manifest.imap_names.values()) | {
        corpus.to_imap_name(p, dovecot.delimiter) for p in manifest.noselect}
    assert set(listed) == expected
    assert {d for _, d in listed.values()} == {"/"}
    for path, entries in manifest.mailboxes.items():
        name = manifest.imap_names[path]
        uidv, listing = corpus.fetch_listing(c, name)
        assert uidv == manifest.uidvalidity[path]
        keys = ("uid", "size", "internaldate_str", "flags", "message_id")
        assert [tuple(e[k] for k in keys) for e in listing] == \
            [tuple(e[k] for k in keys) for e in entries], path
        # Bytes: BODY.PEEK[] == what was APPENDed == manifest.raw().
        if entries:
            c.select(q(name), readonly=True)
            typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            assert typ == "OK"
            got = {}
            for item in data:
                if isinstance(item, tuple):
                    uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                    got[uid] = item[1]
            for e in entries:
                body = got[e["uid"]]
                assert len(body) == e["size"]
                assert hashlib.sha256(body).hexdigest() == e["sha256"]
                assert body == manifest.raw(path, e["uid"])
            c.close()
    # Nothing above set \Seen (all reads were PEEK / EXAMINE).
    _, again = corpus.fetch_listing(c, "INBOX")
    assert [e["flags"] for e in again] == \
        [e["flags"] for e in manifest.messages("INBOX")]
    c.logout()


def test_noselect_parent(dovecot, manifest):
    assert manifest.noselect == ["Parent"]
    c = dovecot.imap()
    listed = corpus.list_mailboxes(c)
    flags, delim = listed["Parent"]
    assert "\\Noselect" in flags and "\\HasChildren" in flags
    assert "\\Noselect" not in listed["Parent/Child"][0]
    typ, _ = c.select("Parent")
    assert typ == "NO"
    typ, data = c.select(q("Parent/Child"), readonly=True)
    assert typ == "OK" and int(data[0]) == len(manifest.messages(
        "Parent/Child"))
    c.logout()


def test_special_folders(dovecot, manifest):
    c = dovecot.imap()
    listed = corpus.list_mailboxes(c)
    assert "R&AOk-unions" in listed
    assert corpus.mutf7_decode("R&AOk-unions") == "Réunions"
    assert "R&AOk-unions/&AMk-t&AOk- 2024" in listed
    assert "R&-D" in listed and "Project Notes" in listed
    assert "\\Sent" in listed["Sent"][0] and "\\Trash" in listed["Trash"][0]
    for path in ("Réunions", "Réunions/Été 2024", "R&D", "Project Notes",
                 "Empty"):
        typ, data = c.select(q(corpus.to_imap_name(path)), readonly=True)
        assert typ == "OK", path
        assert int(data[0]) == len(manifest.messages(path)), path
    assert manifest.messages("Empty") == []
    assert manifest.messages("Trash") == []
    subscribed = corpus.list_subscribed(c)
    assert "Unsubscribed" not in subscribed
    assert {manifest.imap_names[p] for p in manifest.mailboxes
            if p != "Unsubscribed"} <= subscribed
    c.logout()


def test_corpus_contents(manifest):
    total = manifest.total_messages
    assert 300 <= total <= 600
    all_msgs = [(p, m) for p, ms in manifest.mailboxes.items() for m in ms]
    seen = [m for _, m in all_msgs if "\\Seen" in m["flags"]]
    assert 0.3 * total < len(seen) < 0.9 * total
    assert any("\\Flagged" in m["flags"] for _, m in all_msgs)
    assert any("$Forwarded" in m["flags"] for _, m in all_msgs)
    assert sum("\\Deleted" in m["flags"]
               for m in manifest.messages("Archive/2023")) == 2
    assert all(m["flags"] == ("\\Draft",) for m in manifest.messages("Drafts"))
    # ~5 MB message with a base64 attachment.
    path, big = manifest.largest()
    assert path == "Attachments" and 4_800_000 < big["size"] < 6_000_000
    raw = manifest.raw(path, big["uid"])
    assert b"Content-Transfer-Encoding: base64" in raw
    # CRLF only, no bare LF or CR anywhere.
    for p, m in all_msgs:
        r = manifest.raw(p, m["uid"])
        assert r.count(b"\n") == r.count(b"\r\n") == r.count(b"\r"), (p, m)
    # Raw 8-bit bodies: Latin-1 and UTF-8.
    enc = {m["kind"] for m in manifest.messages("Encodings")}
    assert {"latin1", "utf8", "qp", "raw8bit-header"} <= enc
    lat = [manifest.raw("Encodings", m["uid"])
           for m in manifest.messages("Encodings") if m["kind"] == "latin1"]
    assert any(re.search(rb"[\xc0-\xff][a-z]", r) for r in lat)
    assert all(b"charset=iso-8859-1" in r and
               b"Content-Transfer-Encoding: 8bit" in r for r in lat)
    with pytest.raises(UnicodeDecodeError):
        b"".join(lat).decode("utf-8")
    utf = [manifest.raw("Encodings", m["uid"])
           for m in manifest.messages("Encodings") if m["kind"] == "utf8"]
    assert all(max(r) >= 0x80 for r in utf)
    for r in utf:
        r.decode("utf-8")
    # INTERNALDATE varies and matches folder years.
    assert {m["internaldate"].year for m in manifest.messages(
        "Archive/2023")} == {2023}
    assert len({m["internaldate"] for _, m in all_msgs}) > total * 0.95


def test_needles(manifest):
    assert len(manifest.needles) >= 20
    rx = re.compile(rb"needle-[0-9a-f]{16}")
    found = collections.defaultdict(set)
    for path, ms in manifest.mailboxes.items():
        for m in ms:
            for n in rx.findall(manifest.raw(path, m["uid"])):
                found[n.decode()].add((path, m["uid"]))
    assert set(found) == set(manifest.needles)
    for needle, loc in manifest.needles.items():
        assert found[needle] == {loc}, needle
        assert needle in manifest.message(*loc)["needles"]
    places = {loc[0] for loc in manifest.needles.values()}
    assert {"Attachments", "Encodings", "Réunions", "Réunions/Été 2024",
            "Archive/2024/Q1", "Parent/Child", "R&D"} <= places
    # Two needles in the 5 MB message, one after the attachment.
    path, big = manifest.largest()
    raw = manifest.raw(path, big["uid"])
    assert len(big["needles"]) >= 2
    assert raw.rindex(big["needles"][-1].encode()) > len(raw) - 2000


def test_delimiter_dot(empty_dovecot):
    dv = empty_dovecot(delimiter=".", corpus=True)
    man = dv.manifest
    assert man.imap_names["Archive/2024/Q1"] == "Archive.2024.Q1"
    assert man.imap_names["Réunions/Été 2024"] == \
        "R&AOk-unions.&AMk-t&AOk- 2024"
    c = dv.imap()
    listed = corpus.list_mailboxes(c)
    assert {d for _, d in listed.values()} == {"."}
    assert "\\Noselect" in listed["Parent"][0]
    c.logout()
    assert man.total_messages == corpus.build_standard_corpus().total_messages


def test_plant_needles(empty_dovecot):
    dv = empty_dovecot(extra_config=capability_without("UIDPLUS"))
    res = corpus.plant_needles(dv, "Hay/Stack", n=4, seed=7)
    assert len(res) == 4 and {loc[0] for loc in res.values()} == {"Hay/Stack"}
    c = dv.imap()
    c.select(q("Hay/Stack"), readonly=True)
    for needle, (_, uid) in res.items():
        typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert needle.encode() in data[0][1]
    c.logout()


@pytest.mark.parametrize("method", ["maildir", "pipelined", "append"])
def test_bench_corpus_small(empty_dovecot, method):
    dv = empty_dovecot()
    n = 150
    r = corpus.load_bench_corpus(dv, n, method=method)
    assert r["messages"] == r["server_messages"] == n
    expected = collections.defaultdict(list)
    for folder, m in corpus.generate_bench_corpus(n):
        expected[folder].append(m)
    c = dv.imap()
    for folder, msgs in expected.items():
        _, listing = corpus.fetch_listing(c, r["imap_names"][folder])
        # UIDs follow generation order; sizes, dates, flags as generated.
        assert [e["message_id"] for e in listing] == \
            [m.message_id for m in msgs]
        assert [e["size"] for e in listing] == [len(m.data) for m in msgs]
        assert [e["internaldate"] for e in listing] == \
            [m.internaldate for m in msgs]
        assert [e["flags"] for e in listing] == \
            [tuple(sorted(m.flags)) for m in msgs]
    c.logout()


def test_bench_size_distribution():
    import statistics
    sizes = [len(m.data) for _, m in corpus.generate_bench_corpus(3000)]
    med = statistics.median(sizes)
    assert 6000 < med < 10000
    assert max(sizes) > 200_000


# ------------------------------------------------------------------ CLI

def test_imapserver_cli(tmp_path):
    state = tmp_path / "state"
    p = subprocess.Popen([PY, os.path.join(HERE, "imapserver.py"), "--tls",
                          "--messages", "50", "--state-dir", str(state)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        env_file = state / "env"
        deadline = time.monotonic() + 60
        while not env_file.exists():
            assert p.poll() is None, p.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        out = subprocess.run(
            ["bash", "-c", '. "$1" && echo "$HOST $PORT $TLS_PORT $USER '
             '$PWFILE $CAFILE $MESSAGES"', "x", str(env_file)],
            stdout=subprocess.PIPE, check=True).stdout.decode().split()
        host, port, tls_port, user, pwfile, cafile, nmsg = out
        assert host == "127.0.0.1" and nmsg == "50"
        assert stat.S_IMODE(os.stat(pwfile).st_mode) == 0o600
        with open(pwfile) as f:
            password = f.read()
        ctx = ssl.create_default_context(cafile=cafile)
        c = imaplib.IMAP4_SSL(host, int(tls_port), ssl_context=ctx)
        c.login(user, password)
        c.logout()
        c = imaplib.IMAP4(host, int(port))
        c.login(user, password)
        c.logout()
        root = None
        for line in env_file.read_text().splitlines():
            if line.startswith("DOVECOT_ROOT="):
                root = line.split("=", 1)[1]
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=30)
        assert p.returncode == 0, stderr.decode()
        leaked = password.encode() in stdout + stderr
        assert not leaked
        assert b"PORT=" in stdout
        assert not env_file.exists() and not os.path.exists(pwfile)
        assert root and not os.path.exists(root)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# ------------------------------------------------------------------ mount
# A stand-in for imapfuse: same command line, one file "pwlen" holding the
# length of the password that password_command produced, and misbehaviour
# chosen by $FAKE_MODE (warn, crash, asan, fail, leakpw).

FAKE_FUSE_C = r"""
#define FUSE_USE_VERSION 31
#include <fuse.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct opts { char *pwcmd; char *tls; };
static struct opts o;
static char *url;
static char pwlen[32];
static const char *mode = "";

static struct fuse_opt specs[] = {
    {"password_command=%s", offsetof(struct opts, pwcmd), 0},
    {"tls=%s", offsetof(struct opts, tls), 0},
    FUSE_OPT_END
};

static int proc(void *d, const char *arg, int key, struct fuse_args *out)
{
    (void)d; (void)out;
    if (key == FUSE_OPT_KEY_NONOPT && !url && strstr(arg, "://")) {
        url = strdup(arg);
        return 0;
    }
    return 1;
}

static int fk_getattr(const char *p, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    memset(st, 0, sizeof *st);
    if (!strcmp(p, "/")) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; return 0; }
    if (!strcmp(p, "/pwlen")) {
        st->st_mode = S_IFREG | 0444; st->st_nlink = 1;
        st->st_size = strlen(pwlen); return 0;
    }
    return -ENOENT;
}

static int fk_readdir(const char *p, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags fl)
{
    (void)off; (void)fi; (void)fl;
    if (strcmp(p, "/")) return -ENOENT;
    fill(buf, ".", NULL, 0, 0); fill(buf, "..", NULL, 0, 0);
    fill(buf, "pwlen", NULL, 0, 0);
    return 0;
}

static int fk_read(const char *p, char *buf, size_t n, off_t off,
                   struct fuse_file_info *fi)
{
    (void)fi;
    if (strcmp(p, "/pwlen")) return -ENOENT;
    size_t len = strlen(pwlen);
    if ((size_t)off >= len) return 0;
    if (n > len - off) n = len - off;
    memcpy(buf, pwlen + off, n);
    return n;
}

static void fk_destroy(void *pd)
{
    (void)pd;
    if (!strcmp(mode, "crash")) abort();
    if (!strcmp(mode, "asan"))
        fprintf(stderr, "==1==ERROR: AddressSanitizer: heap-use-after-free\n");
}

static const struct fuse_operations ops = {
    .getattr = fk_getattr, .readdir = fk_readdir, .read = fk_read,
    .destroy = fk_destroy,
};

int main(int argc, char **argv)
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    if (getenv("FAKE_MODE")) mode = getenv("FAKE_MODE");
    if (fuse_opt_parse(&args, &o, specs, proc) == -1) return 1;
    if (!o.pwcmd || !url) { fprintf(stderr, "usage\n"); return 1; }
    if (!o.tls || strcmp(o.tls, "off")) { fprintf(stderr, "tls?\n"); return 1; }
    char pw[256] = "";
    FILE *f = popen(o.pwcmd, "r");
    if (!f || !fgets(pw, sizeof pw, f)) { fprintf(stderr, "no password\n"); return 1; }
    pclose(f);
    snprintf(pwlen, sizeof pwlen, "%zu", strlen(pw));
    if (!strcmp(mode, "fail")) {
        fprintf(stderr, "imapfuse: error: cannot connect to %s\n", url);
        return 2;
    }
    if (!strcmp(mode, "warn")) fprintf(stderr, "imapfuse: warning: odd\n");
    if (!strcmp(mode, "leakpw")) fprintf(stderr, "debug: password %s\n", pw);
    return fuse_main(args.argc, args.argv, &ops, NULL);
}
"""


@pytest.fixture(scope="session")
def fake_imapfuse(tmp_path_factory):
    if not os.path.exists("/dev/fuse") or not shutil.which("cc"):
        pytest.skip("needs /dev/fuse and cc")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"],
                           stdout=subprocess.PIPE)
    if flags.returncode != 0:
        pytest.skip("needs libfuse3-dev")
    d = tmp_path_factory.mktemp("fake")
    src = d / "fake.c"
    src.write_text(FAKE_FUSE_C)
    exe = str(d / "imapfuse")
    subprocess.run(["cc", "-Wall", "-o", exe, str(src)] +
                   flags.stdout.decode().split(), check=True)
    return exe


def _env(mode):
    return dict(os.environ, FAKE_MODE=mode)


def test_mount_fixture_ok(dovecot, mount, fake_imapfuse):
    m = mount(dovecot, binary=fake_imapfuse)
    assert is_mounted(m) and os.path.ismount(m.path)
    assert os.listdir(m) == ["pwlen"]
    with open(os.path.join(m, "pwlen")) as f:
        assert int(f.read()) == len(dovecot.password)
    assert m.argv[1:4] == ["-f", "-o", "password_command=cat %s,tls=off" %
                           m.argv[3].split("cat ", 1)[1].split(",")[0]]
    assert m.argv[-2] == "imap://%s@127.0.0.1:%d" % (dovecot.user,
                                                     dovecot.port)
    assert m.unmount() == []
    assert not is_mounted(m.path) and m.returncode == 0


def test_mount_fixture_detects_problems(dovecot, mount, fake_imapfuse):
    m = mount(dovecot, binary=fake_imapfuse, env=_env("warn"))
    problems = m.unmount(check=False)
    assert any("unexpected stderr" in p for p in problems)
    m = mount(dovecot, binary=fake_imapfuse, env=_env("warn"),
              allow_stderr=[r"warning: odd"])
    assert m.unmount(check=False) == []
    m = mount(dovecot, binary=fake_imapfuse, env=_env("crash"))
    problems = m.unmount(check=False)
    assert any("signal SIGABRT" in p for p in problems), problems
    assert not is_mounted(m.path)
    m = mount(dovecot, binary=fake_imapfuse, env=_env("asan"))
    assert any("AddressSanitizer" in p for p in m.unmount(check=False))
    m = mount(dovecot, binary=fake_imapfuse, env=_env("leakpw"),
              allow_stderr=["debug"])
    problems = m.unmount(check=False)
    assert any("password" in p for p in problems)
    leaked = dovecot.password in m.stderr_text() + "\n".join(problems)
    assert not leaked


@pytest.mark.imapfuse_stderr_ok(r"warning: odd")
def test_mount_fixture_marker(dovecot, mount, fake_imapfuse):
    m = mount(dovecot, binary=fake_imapfuse, env=_env("warn"))
    assert m.unmount(check=False) == []


def test_mount_fixture_program_exits(dovecot, mount, fake_imapfuse):
    with pytest.raises(pytest.fail.Exception) as ei:
        mount(dovecot, binary=fake_imapfuse, env=_env("fail"))
    assert "exited (status 2) before mounting" in str(ei.value)
    assert "cannot connect" in str(ei.value)


def test_imapfuse_fail_helper(empty_dovecot, imapfuse_fail, fake_imapfuse):
    dv = empty_dovecot()
    rc, err = imapfuse_fail(dv, binary=fake_imapfuse, env=_env("fail"))
    assert rc == 2 and "cannot connect" in err
    assert "imap://test@127.0.0.1:%d" % dv.port in err

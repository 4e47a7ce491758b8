"""Command line and start-up failures of imapfuse (issue 2).

Every failure must be a one-line error naming the cause, a non-zero exit
status, no mount left behind, and never the password on stdout/stderr.
"""

import os
import re
import shlex
import socket
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from dovecot import free_port

import conftest


def one_line(err, foreign=None):
    """The single error line of imapfuse (lines matching `foreign`, e.g.
    what a password_command itself printed, are not imapfuse's)."""
    lines = [l for l in err.splitlines() if l.strip() and not (
        foreign and re.search(foreign, l))]
    assert len(lines) == 1, "expected a one-line error, got:\n" + err
    return lines[0]


@pytest.fixture
def env(tmp_path):
    d = tmp_path / "xdg-cache"
    d.mkdir()
    return dict(os.environ, XDG_CACHE_HOME=str(d), LC_ALL="C.UTF-8")


@pytest.fixture
def run_fail(imapfuse_bin, env):
    """run_fail(argv_without_mountpoint, secrets=()) -> (rc, stdout, stderr)
    for invocations built by hand; checks exit status, no mount left
    behind, and that no secret is printed."""
    made = []

    def run(argv, secrets=(), mountpoint=True, timeout=30):
        mp = tempfile.mkdtemp(prefix="imapfuse-cli-")
        made.append(mp)
        full = [imapfuse_bin] + list(argv) + ([mp] if mountpoint else [])
        print("+ " + shlex.join(full))
        r = subprocess.run(full, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True,
                           start_new_session=True,  # no controlling tty
                           env=conftest._sanitizer_env(env))
        leftover = conftest.is_mounted(mp)
        if leftover:
            subprocess.run(["fusermount3", "-uz", mp])
        assert not leftover, "left a mount behind"
        assert r.returncode > 0, (r.returncode, r.stderr)
        for s in secrets:
            leaked = s in r.stdout or s in r.stderr
            assert not leaked, "a password was printed"
        assert not re.search(r"AddressSanitizer|LeakSanitizer|runtime error",
                             r.stderr), r.stderr
        return r.returncode, r.stdout, r.stderr

    yield run
    for mp in made:
        try:
            os.rmdir(mp)
        except OSError:
            pass


# ------------------------------------------------------------------ info

def test_help(imapfuse_run):
    r = imapfuse_run("--help")
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout
    for opt in ("password_command=", "cafile=", "tls=off", "imaps://",
                "imap://"):
        assert opt in r.stdout, opt
    r2 = imapfuse_run("-h")
    assert r2.returncode == 0 and "usage:" in r2.stdout


def test_version(imapfuse_run):
    r = imapfuse_run("--version")
    assert r.returncode == 0, r.stderr
    # imapfuse's own version comes first (also when stdout is a pipe).
    assert re.match(r"imapfuse \d+\.\d+\.\d+\n", r.stdout), r.stdout
    assert "FUSE" in r.stdout or "fuse" in r.stdout


# ------------------------------------------------------------------ server

def test_wrong_password(dovecot, imapfuse_fail, tmp_path):
    wrong = "wrong-" + "x" * 20
    pw = tmp_path / "pw"
    pw.write_text(wrong)
    rc, err = imapfuse_fail(dovecot, password_file=str(pw))
    line = one_line(err)
    assert re.search(r"(?i)\blog ?in\b|authenticat", line), line
    assert wrong not in err


def test_unreachable_port(dovecot, imapfuse_fail):
    port = free_port()
    rc, err = imapfuse_fail(dovecot, port=port)
    line = one_line(err)
    assert "127.0.0.1" in line and str(port) in line, line
    assert re.search(r"(?i)refused|connect", line), line


def test_imaps_without_cafile_fails_verification(dovecot_tls, imapfuse_fail):
    rc, err = imapfuse_fail(dovecot_tls, scheme="imaps", tls=None)
    line = one_line(err)
    assert re.search(r"(?i)certificate|verif", line), line
    assert "-o cafile=PATH" in line, line  # how to trust it


def test_wrong_scheme_for_the_port_says_which(dovecot_tls, imapfuse_fail):
    """imaps:// to a plain IMAP port gave OpenSSL's "wrong version
    number" alone; imap:// to a TLS port waited for a greeting that never
    comes and said only "no answer".  Each now names the other scheme."""
    rc, err = imapfuse_fail(dovecot_tls, scheme="imaps", tls=None, port=dovecot_tls.port)
    line = one_line(err)
    assert "wrong version number" in line and "use imap://" in line, line
    rc, err = imapfuse_fail(dovecot_tls, "timeout=2", scheme="imap", tls=None,
                            port=dovecot_tls.tls_port)
    line = one_line(err)
    assert "no IMAP greeting" in line and "use imaps://" in line, line


def test_starttls_without_cafile_fails_verification(dovecot_tls,
                                                    imapfuse_fail):
    rc, err = imapfuse_fail(dovecot_tls, scheme="imap", tls=None)
    line = one_line(err)
    assert re.search(r"(?i)certificate|verif", line), line


def test_imaps_with_wrong_cafile(dovecot_tls, empty_dovecot, imapfuse_fail):
    other = empty_dovecot(tls=True)  # a different test CA
    rc, err = imapfuse_fail(dovecot_tls, "cafile=" + other.cafile,
                            scheme="imaps", tls=None)
    line = one_line(err)
    assert re.search(r"(?i)certificate|verif", line), line


def test_starttls_required_but_not_offered(dovecot, imapfuse_fail):
    # The plain session Dovecot has ssl = no: no STARTTLS capability.
    rc, err = imapfuse_fail(dovecot, tls=None)
    line = one_line(err)
    assert "STARTTLS" in line.upper(), line


class _RefusingStarttls:
    """A fake IMAP server on loopback that offers STARTTLS and answers it
    with NO (or BAD); it records every line it gets."""

    def __init__(self, answer):
        self.answer, self.lines = answer, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with s:
                s.sendall(b"* OK fake\r\n")
                f = s.makefile("rb")
                for line in f:
                    self.lines.append(line)
                    tag, _, cmd = line.decode("latin-1").strip().partition(" ")
                    if cmd.upper() == "CAPABILITY":
                        s.sendall(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n"
                                  + tag.encode() + b" OK done\r\n")
                    elif cmd.upper() == "STARTTLS":
                        s.sendall(tag.encode() + b" " + self.answer + b" not today\r\n")
                    else:
                        s.sendall(tag.encode() + b" BAD no\r\n")

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("answer", [b"NO", b"BAD"])
def test_starttls_refused_says_so_and_sends_nothing(dovecot, imapfuse_fail, answer):
    """A server that answers STARTTLS with NO or BAD: nothing but
    CAPABILITY and STARTTLS goes out, and the error said only the
    server's words ("not today"), not that STARTTLS was refused."""
    fake = _RefusingStarttls(answer)
    try:
        rc, err = imapfuse_fail(dovecot, tls=None, port=fake.port)
    finally:
        fake.close()
    line = one_line(err)
    assert "refused STARTTLS" in line and "not today" in line, line
    sent = [l.split(b" ", 2)[1].strip().upper() for l in fake.lines]
    assert sent and set(sent) <= {b"CAPABILITY", b"STARTTLS"}, fake.lines


def test_tls_handshake_reset_names_the_reset(dovecot, imapfuse_fail):
    """A server that resets the connection on the TLS hello: the error
    said "unknown TLS error" (OpenSSL's queue is empty then)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def serve():
        while True:
            try:
                s, _ = sock.accept()
            except OSError:
                return
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            s.recv(10)
            s.close()  # with SO_LINGER 0: a reset

    threading.Thread(target=serve, daemon=True).start()
    try:
        rc, err = imapfuse_fail(dovecot, scheme="imaps", tls=None,
                                port=sock.getsockname()[1])
    finally:
        sock.close()
    line = one_line(err)
    assert "reset" in line.lower() and "unknown TLS error" not in line, line


def test_missing_cafile(dovecot_tls, imapfuse_fail, tmp_path):
    missing = str(tmp_path / "nope.pem")
    rc, err = imapfuse_fail(dovecot_tls, "cafile=" + missing,
                            scheme="imaps", tls=None)
    line = one_line(err)
    assert "nope.pem" in line or "cafile" in line, line


# ------------------------------------------------------------------ URL

@pytest.mark.parametrize("url,want", [
    ("http://test@127.0.0.1:143", r"imaps?://"),
    ("127.0.0.1", r"imaps?://"),
    ("imap://127.0.0.1:143", r"(?i)user"),
    ("imap://test@127.0.0.1:99999", r"(?i)port"),
    ("imap://test@127.0.0.1:14x", r"(?i)port"),
    ("imap://test@:143", r"(?i)host"),
    ("imap://test@127.0.0.1:143/INBOX", r"(?i)path"),
])
def test_bad_url(dovecot, imapfuse_fail, url, want):
    rc, err = imapfuse_fail(dovecot, url=url)
    line = one_line(err)
    assert re.search(want, line), line


@pytest.mark.parametrize("scheme", ["imap", "imaps"])
def test_password_in_url_refused(dovecot, run_fail, scheme):
    url = "%s://%s:%s@127.0.0.1:%d" % (scheme, dovecot.user,
                                       dovecot.password, dovecot.port)
    rc, out, err = run_fail(["-f", "-o", "password_command=true", url],
                            secrets=[dovecot.password])
    line = one_line(err)
    assert re.search(r"(?i)password", line), line


def test_missing_mountpoint(dovecot, run_fail):
    pw = dovecot.write_password_file()
    rc, out, err = run_fail(["-o", "password_command=cat %s,tls=off" % pw,
                             dovecot.url()], secrets=[dovecot.password],
                            mountpoint=False)
    line = one_line(err)
    assert "mountpoint" in line.lower(), line


def _imapfuse_on(imapfuse_bin, server, mp, env):
    """Runs imapfuse on mountpoint mp expecting a failure; (rc, stderr)."""
    pw = server.write_password_file()
    r = subprocess.run([imapfuse_bin, "-f", "-o", "password_file=%s,tls=off" % pw,
                        server.url(), mp], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL, env=conftest._sanitizer_env(env))
    return r.returncode, r.stderr


def test_mountpoint_not_a_directory(dovecot, imapfuse_bin, env, tmp_path):
    """A regular file as mountpoint: one line, no mount (it mounted, exited
    0, and every stat of the file failed with EIO until fusermount3 -u)."""
    f = tmp_path / "afile"
    f.write_text("x")
    rc, err = _imapfuse_on(imapfuse_bin, dovecot, str(f), env)
    leftover = conftest.is_mounted(str(f))
    if leftover:
        subprocess.run(["fusermount3", "-uz", str(f)])
    assert not leftover and rc == 1
    line = one_line(err)
    assert "not a directory" in line and str(f) in line, line


def test_mountpoint_already_mounted(dovecot, mount, imapfuse_bin, env):
    """A second imapfuse on a mounted directory: refused with one line at
    once (it mounted on top of the first, after a 6 s wait for the
    cache the first one holds)."""
    m = mount(dovecot, env=env)
    start = time.monotonic()
    rc, err = _imapfuse_on(imapfuse_bin, dovecot, m.path, env)
    assert rc == 1 and time.monotonic() - start < 5
    line = one_line(err)
    assert "already a mount point" in line and m.path in line, line
    mounts = [l for l in open("/proc/self/mounts") if l.split()[1] == m.path]
    assert len(mounts) == 1, mounts
    assert "INBOX" in os.listdir(m.path)


def test_mountpoint_given_as_a_mounted_fuse_fd(dovecot, imapfuse_bin, env, tmp_path):
    """libfuse's /dev/fd/N mountpoint: a /dev/fuse already mounted by the
    caller (mount.fuse3 -o drop_privileges, containers).  The mountpoint
    check took it for a character device and refused it."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    mp = tmp_path / "mnt"
    mp.mkdir()
    fd = os.open("/dev/fuse", os.O_RDWR)
    opts = "fd=%d,rootmode=40000,user_id=0,group_id=0" % fd
    assert libc.mount(b"imapfuse", str(mp).encode(), b"fuse.imapfuse", 6, opts.encode()) == 0
    pw = dovecot.write_password_file()
    proc = subprocess.Popen([imapfuse_bin, "-f", "-o", "password_command=cat %s,tls=off" % pw,
                             dovecot.url(), "/dev/fd/%d" % fd], pass_fds=(fd,),
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=conftest._sanitizer_env(env))
    os.close(fd)
    try:
        names = []
        for _ in range(100):
            if proc.poll() is not None:
                break
            try:
                names = os.listdir(str(mp))
                break
            except OSError:
                time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        assert "INBOX" in names
    finally:
        subprocess.run(["umount", "-l", str(mp)])
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_mountpoint_on_another_kind_of_mount_is_taken(dovecot, mount, env, tmp_path):
    """Only a FUSE mount is refused: with x-systemd.automount (fstab) the
    mountpoint is an autofs mount when imapfuse is started (a tmpfs mount
    stands in for it here)."""
    d = tmp_path / "auto"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        m = mount(dovecot, env=env, mountpoint=str(d))
        for _ in range(200):  # mounted already (the tmpfs): wait for imapfuse's
            if any(l.split()[1:3] == [str(d), "fuse.imapfuse"] for l in open("/proc/self/mounts")):
                break
            time.sleep(0.05)
        assert "INBOX" in os.listdir(str(d))
        m.unmount()
    finally:
        subprocess.run(["umount", str(d)])


def test_missing_url(run_fail):
    rc, out, err = run_fail([], mountpoint=False)
    line = one_line(err)
    assert re.search(r"(?i)url|usage", line), line


# ------------------------------------------------------------------ options

@pytest.mark.parametrize("opt,tls,want", [
    ((), "maybe", r"tls="),
    (("connections=0",), "off", r"connections="),
    (("connections=65",), "off", r"connections="),
    (("cache=bogus",), "off", r"cache="),
    (("cache_size=lots",), "off", r"cache_size="),
    (("readahead=-1",), "off", r"readahead="),
    (("readahead_batches=65",), "off", r"readahead_batches="),
    (("timeout=0",), "off", r"timeout="),
    (("spin=-5",), "off", r"spin="),
    (("spin=100001",), "off", r"spin="),
    (("poll=-1",), "off", r"poll="),
    (("poll=86401",), "off", r"poll="),
    (("timeout=-1",), "off", r"timeout="),
    (("msg_timeout=-1",), "off", r"msg_timeout="),
    (("dir_timeout=-1",), "off", r"dir_timeout="),
    (("cache_mem=0",), "off", r"cache_mem="),
    # sscanf's %u took these as 0, 4 and 4294967295 (a poll every 0 s)
    (("poll=4294967296",), "off", r"poll=.*4294967296"),
    (("connections=4x",), "off", r"connections=.*4x"),
    (("max_threads=-1",), "off", r"max_threads="),
    (("watch_idle=",), "off", r"watch_idle="),
    # taken silently (1e300 overflowed the conversion to microseconds)
    (("list_max_age=-3",), "off", r"list_max_age="),
    (("list_max_age=nan",), "off", r"list_max_age="),
    (("list_max_age=1e300",), "off", r"list_max_age="),
    # fuse_opt's %lf took these as 10, 5, 16 and "not given"
    (("msg_timeout=10min",), "off", r"msg_timeout=.*10min"),
    (("list_max_age=5s",), "off", r"list_max_age=.*5s"),
    (("dir_timeout=0x10",), "off", r"dir_timeout=.*0x10"),
    (("list_max_age=-1",), "off", r"list_max_age=.*-1"),
    (("dir_timeout=.",), "off", r"dir_timeout="),
    (("linger=0",), "off", r"linger=.*at least 1 second"),
    (("linger=1m",), "off", r"linger=.*1m"),
])
def test_bad_option_values(dovecot, imapfuse_fail, opt, tls, want):
    rc, err = imapfuse_fail(dovecot, *opt, tls=tls)
    line = one_line(err)
    assert re.search(want, line), line


def test_password_file_missing(dovecot, run_fail):
    rc, out, err = run_fail(["-f", "-o", "password_file=/nonexistent/pw,"
                             "tls=off", dovecot.url()],
                            secrets=[dovecot.password])
    line = one_line(err)
    assert "password_file" in line and "/nonexistent/pw" in line, line


def test_password_file_empty_or_readable_by_others(dovecot, run_fail, tmp_path):
    """An empty first line is refused before any login (it cost a failed
    login, which servers count, and said only that the login failed); a
    password file others can read works, with a warning."""
    pw = tmp_path / "pw"
    for text in ("", "\n" + dovecot.password + "\n"):
        pw.write_text(text)
        pw.chmod(0o600)
        rc, out, err = run_fail(["-f", "-o", "password_file=%s,tls=off" % pw, dovecot.url()],
                                secrets=[dovecot.password])
        line = one_line(err)
        assert "password_file" in line and "empty" in line, line
    pw.write_text(dovecot.password)
    pw.chmod(0o644)
    rc, out, err = run_fail(["-f", "-o", "password_file=%s,tls=off" % pw,
                             "imap://%s@127.0.0.1:%d" % (dovecot.user, free_port())],
                            secrets=[dovecot.password])
    warning, failure = [l for l in err.splitlines() if l.strip()]
    assert "can be read by other users" in warning and "chmod 600" in warning, err
    assert "127.0.0.1" in failure, err


def test_password_option_refused_without_echo(dovecot, imapfuse_fail):
    """-o password=SECRET: refused, and the secret is not printed back
    (libfuse's "unknown option" line quoted it, into logs)."""
    rc, err = imapfuse_fail(dovecot, "password=hunter2-secret")
    line = one_line(err)
    assert "password_command" in line and "hunter2" not in err, err


@pytest.mark.parametrize("opt", ["passwd=hunter2-secret", "Password=hunter2-secret",
                                 "pw=hunter2-secret", "imap_secret=hunter2-secret"])
def test_password_like_options_refused_without_echo(dovecot, imapfuse_fail, opt):
    """Unknown options named like a password went to libfuse, which printed
    them back, value and all ("fuse: unknown option(s): `-o
    passwd=S3cretPw'", into the journal from fstab; an exploratory test)."""
    rc, err = imapfuse_fail(dovecot, opt)
    line = one_line(err)
    name = opt.split("=")[0]
    assert "unknown option %s=" % name in line and "password_command" in line, line
    assert "hunter2" not in err, err


@pytest.mark.parametrize("url", ["imaps:/me:hunter2-secret@imap.example.org",
                                 "imap:me:hunter2-secret@127.0.0.1",
                                 "IMAPS://me:hunter2-secret@imap.example.org"])
def test_a_mistyped_url_is_not_printed_with_its_password(dovecot, imapfuse_fail, url):
    """A scheme typo quoted the whole URL back, a password in it too."""
    rc, err = imapfuse_fail(dovecot, url=url)
    line = one_line(err)
    assert "imaps://USER@HOST" in line and "@" + url.split("@")[1] in line, line
    assert "hunter2" not in err, err


def test_an_empty_cache_dir_is_refused(dovecot, imapfuse_fail):
    """cache_dir= with nothing after it wrote the caches (meta/, bodies/)
    into the directory imapfuse was started in, and said nothing."""
    rc, err = imapfuse_fail(dovecot, "cache_dir=")
    assert "cache_dir= needs a directory" in one_line(err), err


def test_a_password_source_that_never_ends_is_read_only_so_far(dovecot, run_fail, tmp_path):
    """Only the first line of a password_command's output or a
    password_file is used, but all of it was kept in memory: `yes x` filled
    1.7 GB in 6 s (an exploratory test), and a password_file of /dev/zero
    would never have ended.  A first line longer than 4096 bytes is refused."""
    rc, out, err = run_fail(["-f", "-o", "password_command=yes x,tls=off,timeout=3",
                             dovecot.url()], secrets=[dovecot.password], timeout=30)
    assert "password_command" in one_line(err), err
    rc, out, err = run_fail(["-f", "-o", "password_file=/dev/zero,tls=off", dovecot.url()],
                            secrets=[dovecot.password], timeout=30)
    assert "password_file" in one_line(err) and "empty" in one_line(err), err
    long = tmp_path / "long"
    long.write_text("x" * 5000 + "\n")
    long.chmod(0o600)
    rc, out, err = run_fail(["-f", "-o", "password_file=%s,tls=off" % long, dovecot.url()],
                            secrets=[dovecot.password], timeout=30)
    assert "longer than 4096 bytes" in one_line(err), err
    rc, out, err = run_fail(["-f", "-o", "password_command=head -c 5000 /dev/zero | tr "
                             "'\\\\0' y,tls=off", dovecot.url()],
                            secrets=[dovecot.password], timeout=30)
    assert "longer than 4096 bytes" in one_line(err), err

def test_two_password_sources_refused(dovecot, imapfuse_fail, tmp_path):
    rc, err = imapfuse_fail(dovecot, "password_file=" + str(tmp_path / "x"))
    line = one_line(err)
    assert "password_command" in line and "password_file" in line, line


def test_unknown_option(dovecot, imapfuse_fail):
    rc, err = imapfuse_fail(dovecot, "no_such_option=1")
    assert "no_such_option" in err, err


def test_unknown_option_refused_before_connecting(dovecot, imapfuse_fail):
    # A closed port: if imapfuse tried to connect first, the error would be
    # about the connection, not the option.
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rc, err = imapfuse_fail(dovecot, "no_such_option=1", port=port)
    assert "no_such_option" in err, err
    assert "connect" not in err, err


def test_tls_off_with_imaps_refused(dovecot_tls, imapfuse_fail):
    rc, err = imapfuse_fail(dovecot_tls, scheme="imaps", tls="off")
    line = one_line(err)
    assert "tls=off" in line, line


@pytest.mark.parametrize("cmd,want", [
    # the exit status the user's command returned, not a raw wait status
    ("exit 3", r"password_command.*\b3\b"),
    ("true", r"password_command"),           # prints nothing
    ("/nonexistent/helper", r"password_command.*\b127\b"),
])
def test_password_command_fails(dovecot, run_fail, cmd, want):
    rc, out, err = run_fail(["-f", "-o", "password_command=%s,tls=off" % cmd,
                             dovecot.url()], secrets=[dovecot.password])
    line = one_line(err, foreign=r"^/bin/sh: ")
    assert re.search(want, line), line


def test_password_command_that_never_returns(dovecot, run_fail):
    """With no terminal (fstab, systemd, a script) nobody can answer a
    prompt: a password_command that never returns gets -o timeout
    seconds (it held the mount for good)."""
    start = time.monotonic()
    rc, out, err = run_fail(["-f", "-o", "password_command=sleep 100,tls=off,timeout=2",
                             dovecot.url()], secrets=[dovecot.password], timeout=20)
    assert time.monotonic() - start < 10
    line = one_line(err)
    assert "password_command" in line and "2 s" in line, line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["TERM", "HUP", "INT"])
def test_a_stop_while_the_password_command_runs_ends_it_too(dovecot, imapfuse_bin, env,
                                                             tmp_path, sig):
    """With no terminal the password_command runs in a group of its own;
    imapfuse stopped by a signal meanwhile left it running, with nobody
    to end it (an exploratory test).  Now it goes first."""
    tag = "77.%d" % os.getpid()
    mp = tmp_path / "mnt"
    mp.mkdir()
    p = subprocess.Popen([imapfuse_bin, "-f", "-o", "password_command=sleep %s,tls=off" % tag,
                          dovecot.url(), str(mp)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True, env=conftest._sanitizer_env(env))

    def running():
        r = subprocess.run(["pgrep", "-f", "^sleep %s$" % tag], capture_output=True, text=True)
        return r.stdout.split()
    deadline = time.monotonic() + 10
    while not running():
        assert time.monotonic() < deadline, "the password_command did not start"
        time.sleep(0.05)
    p.send_signal(sig)
    assert p.wait(timeout=10) == -sig
    p.stderr.close()
    time.sleep(0.2)
    assert running() == []

@pytest.mark.parametrize("cmd", ["cat %s; (sleep 12 &)", "(sleep 0.3; cat %s) & exit 0"],
                         ids=["prints-then-exits", "helper-prints-later"])
def test_password_command_leaving_a_helper_behind(dovecot, imapfuse_bin, tmp_path, env, cmd):
    """A password_command that prints the password and exits, leaving a
    helper in the background that holds its output (an agent started on
    demand): the password is taken when it exits, not at end of file
    (which waited for the helper, and then the timeout failed it).  One
    that exits before its helper prints is still waited for."""
    pw = tmp_path / "pw"
    pw.write_text(dovecot.password + "\n")
    pw.chmod(0o600)
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen([imapfuse_bin, "-f", "-o",
                             "password_command=%s,tls=off,timeout=5" % (cmd % pw),
                             dovecot.url(), str(mp)], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=conftest._sanitizer_env(env))
    try:
        for _ in range(200):
            if conftest.is_mounted(str(mp)) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert conftest.is_mounted(str(mp)), proc.stderr.read() if proc.poll() is not None else ""
        assert "INBOX" in os.listdir(str(mp))
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)])
        proc.wait(20)
    assert proc.returncode == 0


def test_password_command_first_line_only(dovecot, mount, tmp_path, env):
    """password_command: only the first output line is the password (the
    mount runs password_command='cat FILE' on a two-line file)."""
    pw = tmp_path / "pw"
    pw.write_text(dovecot.password + "\nsecond-line\n")
    pw.chmod(0o600)
    m = mount(dovecot, password_file=str(pw), env=env)
    assert "INBOX" in os.listdir(m.path)


def test_password_never_in_argv_needed(dovecot, run_fail):
    """Without any password source and no terminal: a clear error (no
    prompt hangs, nothing read from argv)."""
    rc, out, err = run_fail(["-f", "-o", "tls=off", dovecot.url()],
                            secrets=[dovecot.password])
    line = one_line(err)
    assert re.search(r"(?i)password", line), line

"""pytest fixtures for imapfuse integration tests.

Servers (tests/integration/dovecot.py, corpus.py):
  dovecot         session  plain Dovecot with the standard corpus loaded
  manifest        session  its corpus.Manifest
  dovecot_tls     session  TLS Dovecot (imaps + STARTTLS), standard corpus
  tls_manifest    session  its corpus.Manifest
  empty_dovecot   function factory: empty_dovecot(**Dovecot kwargs,
                           corpus=False) -> fresh Dovecot, closed afterwards

imapfuse:
  imapfuse_bin    session  path of <builddir>/imapfuse (skips if missing,
                           fails instead when CI or IMAPFUSE_REQUIRE_BINARY)
  mount           function factory: mount(server, *opts, ...) -> Mount
  imapfuse_fail   function factory: imapfuse_fail(server, *opts, ...)
                           -> (returncode, stderr); asserts no mount left
  imapfuse_run    function: imapfuse_run(*argv, timeout=30) -> CompletedProcess

Builddir: $IMAPFUSE_BUILD, else <repo>/build (repo = two levels above this
file). Markers: @pytest.mark.imapfuse_stderr_ok(regex, ...) allows stderr
lines matching the regexes for every mount/fail call of that test.
On a failing test, the Dovecot log tails and imapfuse stderr of every
server/mount the test used are attached to the report.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

import pytest

import corpus as corpus_mod
from dovecot import Dovecot

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FUSERMOUNT = "fusermount3"

# What counts as a complaint on imapfuse's stderr.
BAD_STDERR = re.compile(
    r"(?i)\b(error|warning|critical|fatal|panic)\b|AddressSanitizer|"
    r"LeakSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer|"
    r"MemorySanitizer|runtime error|Segmentation fault|double free|"
    r"stack smashing|Assertion .* failed")


def build_dir():
    return os.environ.get("IMAPFUSE_BUILD") or os.path.join(REPO, "build")


def imapfuse_path():
    return os.path.join(build_dir(), "imapfuse")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "imapfuse_stderr_ok(*regex): stderr lines of imapfuse "
        "matching these regexes are expected (not a failure)")
    config.addinivalue_line("markers", "slow: long-running test")


# ------------------------------------------------------------------ reports

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed and rep.when in ("call", "setup", "teardown"):
        try:
            for title, text in _diagnostic_sections(item):
                rep.sections.append((title, text))
        except Exception as e:  # never break reporting
            rep.sections.append(("harness diagnostics", repr(e)))


def _diagnostic_sections(item):
    servers, mounts = [], []
    for v in getattr(item, "funcargs", {}).values():
        if isinstance(v, Dovecot):
            servers.append(v)
        elif isinstance(v, _Factory):
            servers.extend(v.servers)
            mounts.extend(v.mounts)
    for m in mounts:
        if m.server not in servers:
            servers.append(m.server)
    out = []
    seen = set()
    for s in servers:
        if id(s) in seen:
            continue
        seen.add(id(s))
        out.append(("dovecot log %s:%s" % (s.host, s.port), s.log_tail(40)))
    for m in mounts:
        out.append(("imapfuse stderr (%s)" % m.path, m.stderr_text()[-6000:]
                    or "(empty)"))
    return out


class _Factory:
    """Base for factories; remembers what they made (for diagnostics)."""

    def __init__(self):
        self.servers = []
        self.mounts = []


# ------------------------------------------------------------------ servers

@pytest.fixture(scope="session")
def dovecot():
    """Plain Dovecot (ssl = no) with the standard corpus loaded once.

    Treat it as read-only: tests that modify mail use empty_dovecot.
    `dovecot.manifest` is the corpus.Manifest."""
    dv = Dovecot()
    try:
        dv.manifest = corpus_mod.load_standard_corpus(dv)
    except BaseException:
        print(dv.diagnostics())
        dv.close()
        raise
    yield dv
    dv.close()


@pytest.fixture(scope="session")
def manifest(dovecot):
    return dovecot.manifest


@pytest.fixture(scope="session")
def dovecot_tls():
    """TLS Dovecot: imaps on .tls_port, STARTTLS on .port, CA in .cafile;
    standard corpus loaded (`dovecot_tls.manifest`)."""
    dv = Dovecot(tls=True)
    try:
        dv.manifest = corpus_mod.load_standard_corpus(dv)
    except BaseException:
        print(dv.diagnostics())
        dv.close()
        raise
    yield dv
    dv.close()


@pytest.fixture(scope="session")
def tls_manifest(dovecot_tls):
    return dovecot_tls.manifest


class DovecotFactory(_Factory):
    def __call__(self, corpus=False, **kwargs):
        """Start a fresh Dovecot(**kwargs); corpus=True also loads the
        standard corpus (then .manifest is set)."""
        dv = Dovecot(**kwargs)
        self.servers.append(dv)
        if corpus:
            dv.manifest = corpus_mod.load_standard_corpus(dv)
        return dv

    def close_all(self):
        for dv in self.servers:
            dv.close()


@pytest.fixture
def empty_dovecot(request):
    """Factory: empty_dovecot(tls=False, delimiter="/", users=None,
    extra_config="", layout=None, ipv6=False, san=..., corpus=False)."""
    f = DovecotFactory()
    yield f
    f.close_all()


# ------------------------------------------------------------------ imapfuse

@pytest.fixture(scope="session")
def imapfuse_bin():
    p = imapfuse_path()
    if not os.access(p, os.X_OK):
        msg = "imapfuse not built at %s (set IMAPFUSE_BUILD)" % p
        if os.environ.get("CI") or os.environ.get("IMAPFUSE_REQUIRE_BINARY"):
            pytest.fail(msg)
        pytest.skip(msg)
    return p


def mount_table():
    """{mount point: fstype} from /proc/self/mountinfo."""
    out = {}
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, _, right = line.partition(b" - ")
            fields = left.split()
            mp = re.sub(rb"\\([0-7]{3})",
                        lambda m: bytes([int(m.group(1), 8)]), fields[4])
            out[os.fsdecode(mp)] = right.split()[0].decode()
    return out


def _thread_stacks(pid, max_lines=300):
    """Every thread's stack of a live process (gdb), as text."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return "(no gdb here for the threads' stacks)"
    try:
        r = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx",
                            "-ex", "thread apply all bt"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
    except subprocess.TimeoutExpired:
        return "(gdb took over 60 s)"
    lines = r.stdout.decode(errors="replace").splitlines()
    keep = [l for l in lines if l.startswith(("Thread ", "#"))][:max_lines]
    return "threads' stacks (gdb):\n" + "\n".join(keep)


def is_mounted(path):
    return os.path.realpath(path) in mount_table()


def _sanitizer_env(env):
    env = dict(os.environ if env is None else env)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1:"
                   "print_summary=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.setdefault("LSAN_OPTIONS", "print_suppressions=0")
    return env


def _build_argv(binary, server, opts, tls, scheme, port, user, pwfile,
                mountpoint, args, url):
    o = ["password_command=cat " + pwfile]
    if "," in pwfile or " " in os.path.basename(pwfile):
        raise ValueError("password file path must not contain ',' or ' '")
    if tls is not None:
        o.append("tls=" + tls)
    o.extend(opts)
    if url is None:
        user = user or server.user
        if port is None:
            port = server.tls_port if scheme == "imaps" else server.port
        url = "%s://%s@%s:%d" % (scheme, urllib.parse.quote(user, safe=""),
                                 server.host, port)
    # The argv a shell would produce for:
    #   imapfuse -f -o password_command='cat PWFILE',tls=off URL MNT
    return [binary, "-f", "-o", ",".join(o)] + list(args) + [url, mountpoint]


def _redact(text, server):
    for pw in server.users.values():
        text = text.replace(pw, "***PASSWORD***")
    return text


class Mount:
    """A running imapfuse mount. os.fspath(m) / str(m) is the mount point."""

    def __init__(self, server, argv, mountpoint, own_mountpoint, proc,
                 stderr_path, allow):
        self.server = server
        self.argv = argv
        self.path = mountpoint
        self._own_mountpoint = own_mountpoint
        self.proc = proc
        self.stderr_path = stderr_path
        self.allow = list(allow)
        self.finished = False
        self.returncode = None

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path

    def __repr__(self):
        return "<Mount %s pid=%s>" % (self.path, self.proc.pid)

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return _redact(f.read().decode("utf-8", "replace"),
                               self.server)
        except OSError:
            return ""

    def _raw_stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def is_mounted(self):
        return is_mounted(self.path)

    def bad_stderr_lines(self):
        out = []
        for line in self.stderr_text().splitlines():
            if BAD_STDERR.search(line) and not any(
                    re.search(a, line) for a in self.allow):
                out.append(line)
        return out

    def _drop_mountpoint(self):
        """Removes the directory if the factory made it (and nothing is
        mounted there: rmdir fails then).  Also for a mount the test
        killed and detached itself: those were left in /tmp."""
        if self._own_mountpoint:
            try:
                os.rmdir(self.path)
            except OSError:
                pass

    def unmount(self, check=True, timeout=20.0):
        """Unmount, wait for the process, check exit status and stderr.

        Returns a list of problems (empty if fine); with check=True,
        problems fail the test."""
        if self.finished:  # the test stopped imapfuse itself (a kill)
            self._drop_mountpoint()
            return []
        problems = []
        if is_mounted(self.path):
            ok = False
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                r = subprocess.run([FUSERMOUNT, "-u", self.path],
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
                if r.returncode == 0 or not is_mounted(self.path):
                    ok = True
                    break
                time.sleep(0.2)
            if not ok:
                problems.append("fusermount3 -u failed (busy?): %s; used -uz"
                                % r.stdout.decode(errors="replace").strip())
                subprocess.run([FUSERMOUNT, "-uz", self.path],
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            problems.append("imapfuse did not exit within %.0fs of unmount"
                            % timeout)
            # Where it waits, for the report: seen once in a full run
            # (after the unmount's counters were printed), never again.
            problems.append(_thread_stacks(self.proc.pid))
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            rc = self.proc.returncode
        self.returncode = rc
        self.finished = True
        if is_mounted(self.path):  # crashed FUSE process: ENOTCONN mount
            subprocess.run([FUSERMOUNT, "-uz", self.path],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = str(-rc)
            problems.append("imapfuse killed by signal %s" % name)
        elif rc:
            problems.append("imapfuse exited with status %d" % rc)
        bad = self.bad_stderr_lines()
        if bad:
            problems.append("unexpected stderr lines:\n  " +
                            "\n  ".join(bad[:30]))
        if any(pw and pw in self._raw_stderr()
               for pw in self.server.users.values()):
            problems.append("imapfuse printed a password on stderr")
        self._drop_mountpoint()
        if problems and check:
            pytest.fail("imapfuse %s:\n%s\n--- command: %s\n--- stderr:\n%s"
                        % (self.path, "\n".join(problems),
                           shlex.join(self.argv), self.stderr_text()[-4000:]),
                        pytrace=False)
        return problems


def _marker_allow(request):
    allow = []
    for m in request.node.iter_markers("imapfuse_stderr_ok"):
        allow.extend(m.args)
    return allow


def _new_mountpoint():
    mp = tempfile.mkdtemp(prefix="imapfuse-mnt-")
    os.chmod(mp, 0o755)
    return mp


class MountFactory(_Factory):
    def __init__(self, request, binary):
        super().__init__()
        self.request = request
        self.binary = binary

    def __call__(self, server, *opts, tls="off", scheme="imap", port=None,
                 user=None, password_file=None, mountpoint=None,
                 allow_stderr=(), timeout=15.0, args=(), url=None, env=None,
                 binary=None):
        """Run imapfuse -f -o password_command='cat PWFILE',tls=TLS[,opts]
        SCHEME://USER@127.0.0.1:PORT MOUNTPOINT and wait for the mount.

        opts: extra -o options ("cafile=/x", "ro", ...); tls=None leaves
        tls= out; args: extra argv before the URL; url overrides the URL.
        Returns a Mount (os.PathLike). Fails the test with the program's
        stderr if it exits or does not mount within `timeout`."""
        binary = binary or self.binary
        if binary is None:
            binary = self.request.getfixturevalue("imapfuse_bin")
        pwfile = password_file or server.write_password_file(user=user)
        own = mountpoint is None
        mp = _new_mountpoint() if own else os.path.abspath(mountpoint)
        argv = _build_argv(binary, server, opts, tls, scheme, port, user,
                           pwfile, mp, args, url)
        errf = tempfile.NamedTemporaryFile(prefix="imapfuse-stderr-",
                                           suffix=".log", delete=False)
        print("+ " + shlex.join(argv))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=errf, stderr=errf,
                                env=_sanitizer_env(env))
        errf.close()
        m = Mount(server, argv, mp, own, proc, errf.name,
                  list(allow_stderr) + _marker_allow(self.request))
        self.mounts.append(m)
        deadline = time.monotonic() + timeout
        while True:
            if is_mounted(mp):
                break
            if proc.poll() is not None:
                m.finished = True
                if own and not is_mounted(mp):
                    os.rmdir(mp)
                m.returncode = proc.returncode
                pytest.fail("imapfuse exited (status %s) before mounting\n"
                            "--- command: %s\n--- stderr:\n%s" % (
                                proc.returncode, shlex.join(argv),
                                m.stderr_text()[-4000:]), pytrace=False)
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                m.finished = True
                if is_mounted(mp):
                    subprocess.run([FUSERMOUNT, "-uz", mp])
                if own:
                    try:
                        os.rmdir(mp)
                    except OSError:
                        pass
                pytest.fail("imapfuse did not mount within %.0fs\n"
                            "--- command: %s\n--- stderr:\n%s" % (
                                timeout, shlex.join(argv),
                                m.stderr_text()[-4000:]), pytrace=False)
            time.sleep(0.02)
        self.servers.append(server)
        return m

    def teardown(self):
        problems = []
        for m in self.mounts:
            p = m.unmount(check=False)
            if p:
                problems.append("%s: %s\n--- command: %s\n--- stderr:\n%s" % (
                    m.path, "\n".join(p), shlex.join(m.argv),
                    m.stderr_text()[-4000:]))
        for m in self.mounts:
            try:
                os.unlink(m.stderr_path)
            except OSError:
                pass
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def mount(request, empty_dovecot):
    """Factory: mount(server, *opts, tls="off", scheme="imap", port=None,
    user=None, password_file=None, mountpoint=None, allow_stderr=(),
    timeout=15.0, args=(), url=None, env=None, binary=None) -> Mount.

    On teardown every mount is unmounted (fusermount3 -u, then -uz), the
    process is waited for, and the test fails if it crashed, exited
    non-zero, or wrote error/warning/sanitizer lines to stderr that the
    test did not allow. (Depends on empty_dovecot so that servers made
    there are stopped only after the mounts are gone.)"""
    f = MountFactory(request, None)
    yield f
    f.teardown()


@pytest.fixture(params=["rw", "ro"])
def rw_ro(request):
    """Extra mount options for both modes a reader can mount in: read-write
    (the default) and -o ro, where the kernel sends no OPEN, RELEASE or
    FLUSH and each READ finds its message by inode number (fs.c)."""
    return ("ro",) if request.param == "ro" else ()


class FailFactory(_Factory):
    def __init__(self, request):
        super().__init__()
        self.request = request

    def __call__(self, server, *opts, tls="off", scheme="imap", port=None,
                 user=None, password_file=None, mountpoint=None, timeout=30.0,
                 args=(), url=None, env=None, binary=None):
        """Run imapfuse expecting it to fail; returns (returncode, stderr).

        Asserts: it exits by itself within `timeout` with a non-zero status
        (not a signal) and leaves no mount behind."""
        binary = binary or self.request.getfixturevalue("imapfuse_bin")
        pwfile = password_file or server.write_password_file(user=user)
        own = mountpoint is None
        mp = _new_mountpoint() if own else os.path.abspath(mountpoint)
        argv = _build_argv(binary, server, opts, tls, scheme, port, user,
                           pwfile, mp, args, url)
        print("+ " + shlex.join(argv))
        self.servers.append(server)
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=timeout,
                               env=_sanitizer_env(env))
        except subprocess.TimeoutExpired:
            if is_mounted(mp):
                subprocess.run([FUSERMOUNT, "-uz", mp])
            pytest.fail("imapfuse did not exit within %.0fs (expected a "
                        "failure)\n--- command: %s" % (timeout,
                                                       shlex.join(argv)),
                        pytrace=False)
        err = _redact(r.stderr.decode("utf-8", "replace"), server)
        leftover = is_mounted(mp)
        if leftover:
            subprocess.run([FUSERMOUNT, "-uz", mp])
        if own:
            try:
                os.rmdir(mp)
            except OSError:
                pass
        assert not leftover, "imapfuse failed but left a mount behind"
        assert r.returncode > 0, (
            "expected imapfuse to fail, got status %d\n%s" % (
                r.returncode, err))
        assert not any(pw in r.stderr.decode("utf-8", "replace")
                       for pw in server.users.values()), \
            "imapfuse printed a password on stderr"
        assert not re.search(r"AddressSanitizer|LeakSanitizer|runtime error|"
                             r"UndefinedBehaviorSanitizer", err), err
        return r.returncode, err


@pytest.fixture
def imapfuse_fail(request, empty_dovecot):
    """Factory: imapfuse_fail(server, *opts, tls="off", scheme="imap",
    port=None, user=None, password_file=None, mountpoint=None,
    timeout=30.0, args=(), url=None, env=None, binary=None)
    -> (returncode, stderr)."""
    return FailFactory(request)


@pytest.fixture
def imapfuse_run(imapfuse_bin):
    """imapfuse_run(*argv, timeout=30, env=None) -> CompletedProcess with
    str stdout/stderr (e.g. --help, --version, bad options)."""
    def run(*argv, timeout=30, env=None):
        return subprocess.run([imapfuse_bin] + list(argv),
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, text=True,
                              env=_sanitizer_env(env))
    return run

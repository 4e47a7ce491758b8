"""A private Dovecot (Debian 12, 2.3.19) for integration tests.

Usage::

    from dovecot import Dovecot
    with Dovecot(tls=True) as dv:          # or dv = Dovecot(); ...; dv.stop()
        c = dv.imap()                      # logged-in imaplib.IMAP4
        pw = dv.write_password_file()      # 0600 file for password_command='cat FILE'

Everything lives in one temp directory (config, run dir, logs, maildirs,
certificates). Listeners are on 127.0.0.1 only (optionally also ::1), on free
ports chosen at start. Works when run as root: mail processes run as the
``dovecot`` user, login processes as ``dovenull``, no chroot.

Only the standard library is used. Passwords are random per instance and are
never put into exception messages, reprs or logs written by this module.
"""

import atexit
import grp
import imaplib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

__all__ = ["Dovecot", "DovecotError", "free_port", "imap_quote",
           "DEFAULT_CAPABILITIES", "capability_without", "QUOTA_CONFIG",
           "COMPRESS_CONFIG"]

DOVECOT_BIN = os.environ.get("DOVECOT_BIN", "/usr/sbin/dovecot")
DOVEADM_BIN = os.environ.get("DOVEADM_BIN", "/usr/bin/doveadm")
OPENSSL_BIN = os.environ.get("OPENSSL_BIN", "/usr/bin/openssl")

# Post-login CAPABILITY of Debian 12's dovecot-imapd 2.3.19.1 with this
# module's default configuration (checked by test_harness.py).
DEFAULT_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
    "THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND "
    "URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED "
    "I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN "
    "CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY "
    "PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE").split()


def capability_without(*names):
    """Config line advertising Dovecot's default capabilities minus `names`.

    Example: ``Dovecot(extra_config=capability_without("UIDPLUS", "MOVE"))``.
    Note: Dovecot only stops *advertising* them; it still accepts e.g.
    ``UID MOVE`` if a client sends it anyway.
    """
    drop = {n.upper() for n in names}
    caps = [c for c in DEFAULT_CAPABILITIES if c.upper() not in drop]
    return "imap_capability = " + " ".join(caps) + "\n"


def QUOTA_CONFIG(storage="10M", messages=None):
    """Extra config enabling the maildir quota (QUOTA capability, OVERQUOTA)."""
    rule = "*:storage=%s" % storage
    if messages is not None:
        rule += " messages=%d" % messages
    return ("mail_plugins = $mail_plugins quota\n"
            "protocol imap {\n  mail_plugins = $mail_plugins imap_quota\n}\n"
            "plugin {\n  quota = maildir:User quota\n"
            "  quota_rule = %s\n}\n" % rule)


# COMPRESS=DEFLATE (RFC 4978).
COMPRESS_CONFIG = ("protocol imap {\n"
                   "  mail_plugins = $mail_plugins imap_zlib\n}\n")


class DovecotError(RuntimeError):
    pass


_live = set()
_live_lock = threading.Lock()


def _stop_all_at_exit():
    with _live_lock:
        live = list(_live)
    for dv in live:
        try:
            dv.close()
        except Exception:
            pass


atexit.register(_stop_all_at_exit)


def free_port(hosts=("127.0.0.1",), exclude=()):
    """A TCP port that is currently free on every host in `hosts`."""
    for _ in range(100):
        fam = socket.AF_INET6 if ":" in hosts[0] else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        if port in exclude:
            continue
        ok = True
        for h in hosts[1:]:
            fam = socket.AF_INET6 if ":" in h else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise DovecotError("no free port found")


def imap_quote(s):
    """Quote a str as an IMAP quoted string (imaplib does not do this)."""
    if isinstance(s, bytes):
        s = s.decode("utf-8")
    if "\r" in s or "\n" in s:
        raise ValueError("CR/LF cannot be quoted")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _chmod_755_upto(path, stop):
    """chmod 0755 path and its parents up to (excluding) `stop`."""
    path = os.path.abspath(path)
    stop = os.path.abspath(stop)
    while path.startswith(stop) and path != stop:
        os.chmod(path, 0o755)
        path = os.path.dirname(path)


def _live_group_members(pgid):
    """PIDs in process group `pgid` that are not zombies."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                st = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces/parens.
        fields = st[st.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(d))
    return out


class Dovecot:
    """A private Dovecot instance.

    Parameters
    ----------
    tls:          also serve imaps on `tls_port` and STARTTLS on `port`
                  (ssl = yes, plaintext auth still allowed).
    delimiter:    hierarchy separator of the inbox namespace ("/" or ".").
    users:        {name: password}; default one user "test" with a random
                  password. The first user is `self.user`.
    extra_config: str (or list of str) appended to dovecot.conf; later
                  settings override earlier ones.
    ipv6:         also listen on ::1 (same port numbers).
    san:          subjectAltName entries of the server certificate.
    layout:       None (Maildir++: ".Archive.2023" dirs) or "fs"
                  (Archive/2023 dirs; allows "." in names with "/" delimiter).
    root:         use this directory instead of a fresh temp dir (it is
                  not deleted on close()).
    port, tls_port: fixed ports instead of free ones picked at start.
    max_userip_connections: Dovecot's per-user+IP connection limit.
    start:        start immediately (default True).
    startup_timeout: seconds to wait until a real LOGIN succeeds.
    """

    host = "127.0.0.1"

    def __init__(self, tls=False, delimiter="/", users=None, extra_config="",
                 ipv6=False, san=("DNS:localhost", "IP:127.0.0.1", "IP:::1"),
                 layout=None, root=None, start=True, startup_timeout=20.0,
                 max_userip_connections=200, port=None, tls_port=None):
        if delimiter not in ("/", "."):
            raise ValueError("delimiter must be '/' or '.'")
        self.tls = bool(tls)
        self.delimiter = delimiter
        if users is None:
            users = {"test": "pw-" + secrets.token_hex(12)}
        if not users:
            raise ValueError("need at least one user")
        for name, pw in users.items():
            if ":" in name or ":" in pw or "\n" in pw or "\n" in name:
                raise ValueError("':' and newlines not allowed in users")
        self.users = dict(users)
        self.user = next(iter(self.users))
        if isinstance(extra_config, (list, tuple)):
            extra_config = "\n".join(extra_config)
        self.extra_config = extra_config
        self.ipv6 = ipv6
        self.san = tuple(san)
        self.layout = layout
        self.startup_timeout = startup_timeout
        self.max_userip_connections = max_userip_connections
        self.proc = None
        self.port = port
        self.tls_port = tls_port
        self.cafile = None
        self.certfile = None
        self.keyfile = None
        self._pwfiles = []
        self._own_root = root is None
        if root is None:
            self.root = tempfile.mkdtemp(prefix="imapfuse-dovecot-")
        else:
            self.root = os.path.abspath(root)
            os.makedirs(self.root, exist_ok=True)
        # dovenull/dovecot must be able to traverse to the run dir.
        os.chmod(self.root, 0o755)
        self.run_dir = os.path.join(self.root, "run")
        self.state_dir = os.path.join(self.root, "state")
        self.mail_dir = os.path.join(self.root, "mail")
        self.home_dir = os.path.join(self.root, "home")
        self.ssl_dir = os.path.join(self.root, "ssl")
        self.config_path = os.path.join(self.root, "dovecot.conf")
        self.passwd_path = os.path.join(self.root, "passwd")
        self.log_path = os.path.join(self.root, "dovecot.log")
        self.stderr_path = os.path.join(self.root, "dovecot.stderr")
        pw_ent = pwd.getpwnam("dovecot")
        self.mail_uid = pw_ent.pw_uid
        self.mail_gid = grp.getgrnam("dovecot").gr_gid
        for d in (self.run_dir, self.state_dir, self.mail_dir, self.home_dir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        for d in (self.mail_dir, self.home_dir):
            os.chown(d, self.mail_uid, self.mail_gid)
        self._write_passwd()
        if self.tls:
            self._make_certs()
        with _live_lock:
            _live.add(self)
        if start:
            self.start()

    # ----------------------------------------------------------- setup
    def __repr__(self):  # never include passwords
        return "<Dovecot %s:%s tls_port=%s root=%s %s>" % (
            self.host, self.port, self.tls_port, self.root,
            "running" if self.running else "stopped")

    @property
    def password(self):
        return self.users[self.user]

    def _write_passwd(self):
        lines = []
        for name, pw in self.users.items():
            lines.append("%s:{PLAIN}%s::::::\n" % (name, pw))
        fd = os.open(self.passwd_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o640)
        with os.fdopen(fd, "w") as f:
            f.write("".join(lines))
        os.chown(self.passwd_path, 0, self.mail_gid)
        os.chmod(self.passwd_path, 0o640)

    def _openssl(self, *args):
        r = subprocess.run([OPENSSL_BIN] + list(args), cwd=self.ssl_dir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise DovecotError("openssl %s failed:\n%s" % (
                " ".join(args), r.stdout.decode(errors="replace")))

    def _make_certs(self):
        """Self-signed test CA + server cert (EC P-256) via the openssl CLI."""
        os.makedirs(self.ssl_dir, exist_ok=True)
        os.chmod(self.ssl_dir, 0o755)
        ca_ext = os.path.join(self.ssl_dir, "ca.ext")
        with open(ca_ext, "w") as f:
            f.write("[req]\ndistinguished_name = dn\n[dn]\n"
                    "[v3_ca]\nbasicConstraints = critical, CA:TRUE\n"
                    "keyUsage = critical, keyCertSign, cRLSign\n"
                    "subjectKeyIdentifier = hash\n")
        srv_ext = os.path.join(self.ssl_dir, "server.ext")
        with open(srv_ext, "w") as f:
            f.write("basicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature, keyEncipherment\n"
                    "extendedKeyUsage = serverAuth\n"
                    "subjectKeyIdentifier = hash\n"
                    "authorityKeyIdentifier = keyid, issuer\n"
                    "subjectAltName = %s\n" % ", ".join(self.san))
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes"]
        self._openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out",
                      "ca.pem", "-days", "3650", "-subj",
                      "/CN=imapfuse test CA %s" % secrets.token_hex(4),
                      "-config", ca_ext, "-extensions", "v3_ca")
        self._openssl("req", "-new", *ec, "-keyout", "server.key", "-out",
                      "server.csr", "-subj", "/CN=localhost",
                      "-config", ca_ext)
        self._openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem",
                      "-CAkey", "ca.key", "-CAcreateserial", "-out",
                      "server.pem", "-days", "3650", "-extfile", srv_ext)
        self.cafile = os.path.join(self.ssl_dir, "ca.pem")
        self.certfile = os.path.join(self.ssl_dir, "server.pem")
        self.keyfile = os.path.join(self.ssl_dir, "server.key")
        os.chmod(self.keyfile, 0o600)
        os.chmod(os.path.join(self.ssl_dir, "ca.key"), 0o600)
        for p in (self.cafile, self.certfile):
            os.chmod(p, 0o644)

    def _config(self):
        listen = "127.0.0.1, ::1" if self.ipv6 else "127.0.0.1"
        mail_location = "maildir:%s/%%u" % self.mail_dir
        if self.layout:
            mail_location += ":LAYOUT=%s" % self.layout
        if self.tls:
            dh = "/usr/share/dovecot/dh.pem"
            ssl = ("ssl = yes\nssl_cert = <%s\nssl_key = <%s\n%s" % (
                self.certfile, self.keyfile,
                "ssl_dh = <%s\n" % dh if os.path.exists(dh) else ""))
            imaps = "  inet_listener imaps {\n    port = %d\n    ssl = yes\n  }\n" % (
                self.tls_port)
        else:
            ssl = "ssl = no\n"
            imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
        return """\
# Generated by tests/integration/dovecot.py -- test use only.
base_dir = {run}
state_dir = {state}
instance_name = imapfuse-test-{port}
protocols = imap
listen = {listen}
log_path = {log}
info_log_path = {log}
log_timestamp = "%Y-%m-%d %H:%M:%S "
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 1
first_valid_gid = 1
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
{ssl}
mail_location = {mail_location}
mail_fsync = never
mail_max_userip_connections = {maxconn}
mailbox_list_index = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/%u
}}
namespace inbox {{
  inbox = yes
  separator = {sep}
  prefix =
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
{imaps}}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
# ---- extra config
{extra}
""".format(run=self.run_dir, state=self.state_dir, port=self.port,
           listen=listen, log=self.log_path, ssl=ssl,
           mail_location=mail_location, maxconn=self.max_userip_connections,
           passwd=self.passwd_path, uid=self.mail_uid, gid=self.mail_gid,
           home=self.home_dir, sep=self.delimiter, imaps=imaps,
           extra=self.extra_config)

    # ----------------------------------------------------------- lifecycle
    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Start (or restart after stop(); ports are kept once chosen)."""
        if self.running:
            return self
        fresh_ports = self.port is None
        for attempt in range(3):
            try:
                return self._start_once()
            except DovecotError as e:
                # Another process took a port between free_port() and bind.
                if not fresh_ports or "in use" not in str(e) or attempt == 2:
                    raise
                self.port = self.tls_port = None

    def _start_once(self):
        hosts = ("127.0.0.1", "::1") if self.ipv6 else ("127.0.0.1",)
        if self.port is None:
            self.port = free_port(hosts)
        if self.tls and self.tls_port is None:
            self.tls_port = free_port(hosts, exclude=(self.port,))
        with open(self.config_path, "w") as f:
            f.write(self._config())
        os.chmod(self.config_path, 0o644)
        t0 = time.monotonic()
        errf = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [DOVECOT_BIN, "-F", "-c", self.config_path],
                stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                start_new_session=True, close_fds=True)
        finally:
            errf.close()
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, t0):
        deadline = t0 + self.startup_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DovecotError(
                    "dovecot exited with status %s during startup\n%s" % (
                        self.proc.returncode, self.diagnostics()))
            try:
                c = imaplib.IMAP4(self.host, self.port, timeout=2)
                try:
                    c.login(self.user, self.password)
                    c.logout()
                    return
                finally:
                    try:
                        c.shutdown()
                    except Exception:
                        pass
            except (OSError, imaplib.IMAP4.error, EOFError) as e:
                # Never include the exception text verbatim if it might
                # echo our command (imaplib errors do not, but be safe).
                last = "%s: %s" % (type(e).__name__,
                                   str(e).replace(self.password, "***"))
            time.sleep(0.05)
        raise DovecotError(
            "dovecot did not accept LOGIN within %.0fs (last: %s)\n%s" % (
                self.startup_timeout, last, self.diagnostics()))

    def stop(self, timeout=10.0):
        """Stop the server and every process it started (keeps the data)."""
        p = self.proc
        if p is None:
            return
        pgid = p.pid  # start_new_session: pgid == pid of the master
        # SIGTERM the whole group at once: the master alone waits ~1 s for
        # its children and leaves imap processes of open sessions running.
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        # Children are reparented to PID 1 when the master exits; zombies
        # waiting to be reaped by it are dead already and do not count.
        deadline = time.monotonic() + 3.0
        while _live_group_members(pgid):
            if time.monotonic() > deadline:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
            time.sleep(0.02)
        # Belt and braces: any process still using our config/base_dir.
        for pid in self._pids_using_root():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.proc = None

    def _pids_using_root(self):
        pids = []
        me = os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if self.config_path.encode() in cmd or (
                    b"imapfuse-test-%d" % (self.port or 0)) in cmd:
                pids.append(int(d))
        return pids

    def close(self):
        """stop() and remove the temp dir (unless root= was given or
        IMAPFUSE_KEEP_DOVECOT=1)."""
        self.stop()
        with _live_lock:
            _live.discard(self)
        for p in self._pwfiles:
            try:
                os.unlink(p)
            except OSError:
                pass
        if self._own_root and not os.environ.get("IMAPFUSE_KEEP_DOVECOT"):
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------- diagnostics
    def log_tail(self, lines=60):
        out = []
        for path in (self.stderr_path, self.log_path):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if data:
                text = data.decode("utf-8", "replace").splitlines()[-lines:]
                out.append("--- %s (last %d lines)\n%s" % (
                    os.path.basename(path), len(text), "\n".join(text)))
        text = "\n".join(out) if out else "(no dovecot log output)"
        for pw in self.users.values():
            text = text.replace(pw, "***")
        return text

    def diagnostics(self):
        return "dovecot root: %s\n%s" % (self.root, self.log_tail())

    def log_errors(self):
        """Lines of the log containing 'Error:', 'Fatal:' or 'Panic:'."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [l for l in text.splitlines()
                if re.search(r"\b(Error|Fatal|Panic):", l)]

    # ----------------------------------------------------------- clients
    def ssl_context(self, cafile=None):
        """Client context trusting only the test CA (or `cafile`)."""
        # With cafile given, create_default_context loads nothing else.
        return ssl.create_default_context(cafile=cafile or self.cafile)

    def connect(self, mode="plain", timeout=30):
        """A connected but not logged-in imaplib client.

        mode: "plain", "starttls" (plain port + STARTTLS), "imaps".
        """
        if mode == "plain":
            c = imaplib.IMAP4(self.host, self.port, timeout=timeout)
        elif mode == "starttls":
            c = imaplib.IMAP4(self.host, self.port, timeout=timeout)
            c.starttls(ssl_context=self.ssl_context())
        elif mode == "imaps":
            if not self.tls:
                raise DovecotError("this Dovecot was started without tls")
            c = imaplib.IMAP4_SSL(self.host, self.tls_port,
                                  ssl_context=self.ssl_context(),
                                  timeout=timeout)
        else:
            raise ValueError(mode)
        try:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return c

    def imap(self, user=None, mode="plain", timeout=30):
        """An independent, logged-in imaplib.IMAP4 connection."""
        user = user or self.user
        c = self.connect(mode, timeout=timeout)
        try:
            c.login(user, self.users[user])
        except imaplib.IMAP4.error as e:
            c.shutdown()
            raise DovecotError("LOGIN as %s failed: %s\n%s" % (
                user, e, self.log_tail(20))) from None
        return c

    def write_password_file(self, path=None, user=None):
        """Write the user's password (no newline) to a 0600 file.

        Returns the path; use with -o password_command='cat PATH'.
        The file is removed on close() if it was created here.
        """
        pw = self.users[user or self.user]
        if path is None:
            fd, path = tempfile.mkstemp(prefix="imapfuse-pw-", dir=self.root)
            os.close(fd)
            self._pwfiles.append(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pw)
        return path

    def url(self, user=None, scheme="imap"):
        user = user or self.user
        port = self.tls_port if scheme == "imaps" else self.port
        return "%s://%s@%s:%d" % (scheme, user, self.host, port)

    # ----------------------------------------------------------- server side
    def doveadm(self, *args, check=True, timeout=60):
        """Run doveadm against this instance; returns CompletedProcess."""
        r = subprocess.run([DOVEADM_BIN, "-c", self.config_path] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise DovecotError("doveadm %s failed (%d): %s" % (
                " ".join(args), r.returncode,
                r.stderr.decode(errors="replace")))
        return r

    def kick(self, user=None):
        """Disconnect all IMAP sessions of a user (server-side)."""
        return self.doveadm("kick", user or self.user, check=False)

    def user_maildir(self, user=None):
        return os.path.join(self.mail_dir, user or self.user)

    def maildir_path(self, imap_name, user=None):
        """Directory of a mailbox (IMAP name, mUTF-7, server delimiter)."""
        root = self.user_maildir(user)
        if imap_name.upper() == "INBOX":
            return root
        if self.layout == "fs":
            return os.path.join(root, *imap_name.split(self.delimiter))
        return os.path.join(root, "." + imap_name.replace(self.delimiter, "."))

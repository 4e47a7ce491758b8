"""bench/farlab.py - a private Dovecot reached through bench/latency_proxy.c,
and imapfuse mounted on it: what bench/tree_walk.py and bench/write_ops.py
share.  Loopback only; needs root (FUSE, Dovecot)."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def scan_cmd(tool, needle, d, rg="rg"):
    """The one command line of each scanning tool, for bench.py and ab.py
    alike, so that their numbers stay comparable.  rg reads no config and
    looks up no ignore files (about 50 LOOKUPs a scan otherwise), as
    grep -r does not."""
    if tool == "rg":
        return [rg, "-j4", "--no-config", "--no-ignore", "--hidden",
                "--no-heading", "--with-filename", needle, d]
    return ["grep", "-r", needle, d]


def env_of(state):
    """The DIR/env that tests/integration/imapserver.py writes, as a dict."""
    path = os.path.join(state, "env")
    for _ in range(300):
        if os.path.exists(path):
            break
        time.sleep(0.1)
    out = {}
    for line in open(path):
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            out[k] = v.strip("'")
    return out


def add_far_options(ap):
    """The options every far-server benchmark takes: the proxy's delay,
    the number of rounds, and the imapfuse binary."""
    ap.add_argument("--delay-ms", type=float, default=10, help="proxy delay each way")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--imapfuse-bin", default=os.path.join(ROOT, "build", "imapfuse"))


@contextlib.contextmanager
def far_server(prefix, delay_ms, before_proxy=None, messages=0, seed=None):
    """Yields (work, env, port): a temporary directory, the Dovecot's env
    (HOST, PORT, USER, PWFILE, ...) and the proxy's port, DELAY each way.
    The account starts with MESSAGES benchmark messages (SEED), then
    before_proxy(env) runs (filling the account at full speed).
    Everything is stopped and removed afterwards."""
    work = tempfile.mkdtemp(prefix=prefix)
    proxy_bin = os.path.join(work, "latency_proxy")
    subprocess.run(["cc", "-O2", "-pthread", os.path.join(HERE, "latency_proxy.c"), "-o",
                    proxy_bin], check=True)
    dv = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "integration",
                                                        "imapserver.py"),
                           "--messages", str(messages), "--state-dir", os.path.join(work, "dv")]
                          + (["--seed", str(seed)] if seed is not None else []),
                          stdout=subprocess.DEVNULL)
    proxy = None
    try:
        env = env_of(os.path.join(work, "dv"))
        if before_proxy is not None:
            before_proxy(env)
        proxy = subprocess.Popen([proxy_bin, "--target-port", env["PORT"], "--delay-ms",
                                  str(delay_ms)], stdout=subprocess.PIPE, text=True)
        yield work, env, int(proxy.stdout.readline().split()[2])
    finally:
        if proxy is not None:
            proxy.terminate()
        dv.terminate()
        dv.wait(30)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def mounted(binary, env, port, mnt, cache, opts=""):
    """imapfuse in the foreground on mnt (cache_dir=cache, more -o opts),
    until the block ends; exits the script if imapfuse does."""
    o = "password_file=%s,tls=off,cache_dir=%s" % (env["PWFILE"], cache)
    if opts:
        o += "," + opts
    p = subprocess.Popen([binary, "-f", "-o", o, "imap://%s@127.0.0.1:%d" % (env["USER"], port),
                          mnt], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            if subprocess.run(["mountpoint", "-q", mnt]).returncode == 0:
                break
            if p.poll() is not None:
                sys.exit("imapfuse exited: %s" % p.stderr.read())
            time.sleep(0.1)
        yield p
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
        p.wait(60)

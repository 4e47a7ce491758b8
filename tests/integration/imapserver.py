#!/usr/bin/env python3
"""Run a private test Dovecot with a corpus until SIGINT/SIGTERM.

    python3 tests/integration/imapserver.py [--tls] [--messages N] \\
        --state-dir DIR

Loads the standard corpus (or, with --messages N, N benchmark messages
instead; --messages 0 leaves the account empty), then writes DIR/env with
HOST, PORT, TLS_PORT, USER, PWFILE, CAFILE, IMAP_URL, ... for a shell
script to source (`. DIR/env`), prints it, and waits. DIR/password (0600)
holds the password; it is never printed. On SIGINT/SIGTERM Dovecot is
stopped and DIR/env, DIR/password, DIR/pid are removed.
Only 127.0.0.1 is used. Needs root (Dovecot drops to dovecot/dovenull).
"""

import argparse
import os
import shlex
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import corpus  # noqa: E402
from dovecot import Dovecot  # noqa: E402


class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop(signum)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", required=True,
                    help="where env, password, ca.pem and pid are written")
    ap.add_argument("--tls", action="store_true",
                    help="ssl = yes: imaps on TLS_PORT, STARTTLS on PORT")
    ap.add_argument("--messages", type=int, default=None, metavar="N",
                    help="load N benchmark messages instead of the standard "
                    "corpus (0 = empty account)")
    ap.add_argument("--method", default="maildir",
                    choices=["maildir", "pipelined", "append"],
                    help="how --messages are loaded (default maildir)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--delimiter", default="/", choices=["/", "."])
    ap.add_argument("--user", default="test")
    ap.add_argument("--port", type=int, default=None,
                    help="fixed IMAP port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--tls-port", type=int, default=None)
    ap.add_argument("--extra-config", action="append", default=[],
                    metavar="LINE", help="extra dovecot.conf line(s)")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    state = os.path.abspath(args.state_dir)
    os.makedirs(state, exist_ok=True)
    env_path = os.path.join(state, "env")
    pw_path = os.path.join(state, "password")
    pid_path = os.path.join(state, "pid")
    for p in (env_path, pw_path, pid_path):
        if os.path.exists(p):
            os.unlink(p)

    import secrets
    dv = None
    rc = 0
    try:
        t0 = time.monotonic()
        dv = Dovecot(tls=args.tls, delimiter=args.delimiter,
                     users={args.user: "pw-" + secrets.token_hex(12)},
                     extra_config="\n".join(args.extra_config),
                     port=args.port, tls_port=args.tls_port)
        t_start = time.monotonic() - t0
        t1 = time.monotonic()
        if args.messages is None:
            kw = {} if args.seed is None else {"seed": args.seed}
            man = corpus.load_standard_corpus(dv, **kw)
            count, nbytes = man.total_messages, man.total_bytes
        elif args.messages > 0:
            kw = {} if args.seed is None else {"seed": args.seed}
            r = corpus.load_bench_corpus(dv, args.messages,
                                         method=args.method, **kw)
            count, nbytes = r["messages"], r["bytes"]
        else:
            count, nbytes = 0, 0
        t_load = time.monotonic() - t1
        dv.write_password_file(pw_path)
        cafile = ""
        if dv.cafile:
            cafile = os.path.join(state, "ca.pem")
            shutil.copyfile(dv.cafile, cafile)
        env = [
            ("HOST", dv.host),
            ("PORT", str(dv.port)),
            ("TLS_PORT", str(dv.tls_port or "")),
            ("USER", dv.user),
            ("IMAP_USER", dv.user),
            ("PWFILE", pw_path),
            ("CAFILE", cafile),
            ("IMAP_URL", dv.url()),
            ("IMAPS_URL", dv.url(scheme="imaps") if dv.tls else ""),
            ("DELIMITER", dv.delimiter),
            ("MESSAGES", str(count)),
            ("BYTES", str(nbytes)),
            ("DOVECOT_ROOT", dv.root),
            ("DOVECOT_LOG", dv.log_path),
            ("SERVER_PID", str(os.getpid())),
        ]
        text = "".join("%s=%s\n" % (k, shlex.quote(v)) for k, v in env)
        tmp = env_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, env_path)  # appears atomically: readiness signal
        with open(pid_path, "w") as f:
            f.write("%d\n" % os.getpid())
        sys.stdout.write(text)
        sys.stdout.write("# dovecot started in %.2fs, %d messages (%d bytes) "
                         "loaded in %.2fs; env in %s; stop with kill -TERM "
                         "%d\n" % (t_start, count, nbytes, t_load, env_path,
                                   os.getpid()))
        sys.stdout.flush()
        # Wake up from pause() if the Dovecot master (our child) dies.
        signal.signal(signal.SIGCHLD, lambda *a: None)
        while True:
            signal.pause()
            if not dv.running:
                sys.stderr.write("dovecot died:\n%s\n" % dv.log_tail())
                rc = 1
                break
    except _Stop:
        pass
    except Exception as e:
        sys.stderr.write("imapserver: %s\n" % e)
        rc = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if dv is not None:
            dv.close()
        for p in (env_path, pw_path, pid_path):
            try:
                os.unlink(p)
            except OSError:
                pass
    return rc


if __name__ == "__main__":
    sys.exit(main())

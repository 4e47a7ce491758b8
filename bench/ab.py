#!/usr/bin/env python3
"""bench/ab.py - two imapfuse builds (or option sets) side by side:
alternating scans of the benchmark corpus, each on a fresh mount, medians.

    python3 bench/ab.py --a OLD_BINARY --b NEW_BINARY [--rounds 6]
        [--tool grep|rg|both] [--pass cold|second|warm] [--delay-ms 0]
        [--a-opts OPTS] [--b-opts OPTS] [--messages 10000] [--seed 2]

Starts a private Dovecot with the benchmark corpus (tests/integration/
imapserver.py, loopback only; through bench/latency_proxy.c when
--delay-ms is above 0) and, ROUNDS times, for each tool and then each
side in turn (A, B, A, B, ...), times one scan (`grep -r`, or `rg -j4`, the command lines bench.py runs:
farlab.scan_cmd):
  cold    a fresh mount with an empty cache directory
  second  the same, after a first scan on that mount (the kernel's pages)
  warm    a fresh mount on the cache directory a first scan filled
Prints each run (seconds, and the CPU the whole machine spent busy and
idle over it, from /proc/stat), then the median of each side and B / A.
This is how the "alternating runs, medians" in README and
doc/performance.md were measured; one sitting, so a drift in the
machine's speed lands on both sides.  To compare git revisions, build
each (`git worktree add /tmp/old REV && meson setup /tmp/old/build
/tmp/old && ninja -C /tmp/old/build`) and pass the binaries.
Needs root (FUSE, Dovecot).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from farlab import far_server, mounted, scan_cmd  # noqa: E402

NEEDLE = "no-such-needle-anywhere"  # every file is read to the end


def cpu_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)  # idle (with iowait), all


def scan(tool, mnt):
    cmd = scan_cmd(tool, NEEDLE, mnt)
    i0, a0 = cpu_ticks()
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t = time.monotonic() - t0
    i1, a1 = cpu_ticks()
    if r.returncode not in (0, 1) or r.stderr:  # 1: no match, as meant
        sys.exit("%s failed: %s" % (tool, r.stderr.strip()[-500:]))
    hz = os.sysconf("SC_CLK_TCK")
    return t, ((a1 - a0) - (i1 - i0)) / hz, (i1 - i0) / hz


def one_run(binary, opts, tool, what, env, port, work):
    mnt = os.path.join(work, "mnt")
    cache = os.path.join(work, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    os.makedirs(mnt, exist_ok=True)
    with mounted(binary, env, port, mnt, cache, opts):
        time.sleep(0.5)  # the mount's own start-up, not the scan's
        if what == "cold":
            return scan(tool, mnt)
        scan(tool, mnt)
        if what == "second":
            return scan(tool, mnt)
    with mounted(binary, env, port, mnt, cache, opts):
        time.sleep(0.5)
        return scan(tool, mnt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="imapfuse binary A (the baseline)")
    ap.add_argument("--b", required=True, help="imapfuse binary B (may be A, with --b-opts)")
    ap.add_argument("--a-opts", default="", help="extra -o options for A")
    ap.add_argument("--b-opts", default="", help="extra -o options for B")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tool", choices=["grep", "rg", "both"], default="both")
    ap.add_argument("--pass", dest="what", choices=["cold", "second", "warm"], default="cold")
    ap.add_argument("--delay-ms", type=int, default=0,
                    help="through the latency proxy, this much each way (0: direct)")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()
    sides = [("A", os.path.abspath(args.a), args.a_opts), ("B", os.path.abspath(args.b),
                                                           args.b_opts)]
    tools = ["grep", "rg"] if args.tool == "both" else [args.tool]
    if "rg" in tools and shutil.which("rg") is None:
        sys.exit("rg is not installed (apt-get install ripgrep)")
    times = {}
    with far_server("imapfuse-ab-", args.delay_ms, messages=args.messages,
                    seed=args.seed) as (work, env, port):
        if args.delay_ms == 0:
            port = int(env["PORT"])
        # Dovecot's files into the page cache once, before the first run.
        for d, _, fs in os.walk(os.path.join(env["DOVECOT_ROOT"], "mail")):
            for f in fs:
                with open(os.path.join(d, f), "rb") as fh:
                    while fh.read(1 << 20):
                        pass
        for r in range(args.rounds):
            for tool in tools:
                for name, binary, opts in sides:
                    t, busy, idle = one_run(binary, opts, tool, args.what, env, port, work)
                    times.setdefault((tool, name), []).append(t)
                    print("round %d  %-4s %s  %.3f s  (machine busy %.2f, idle %.2f "
                          "CPU-seconds)" % (r + 1, tool, name, t, busy, idle), flush=True)
    print("\n%s %s, %d rounds, %d messages%s:" % (
        args.what, "/".join(tools), args.rounds, args.messages,
        ", %d ms each way" % args.delay_ms if args.delay_ms else ", loopback"))
    for name, binary, opts in sides:
        print("  %s = %s%s" % (name, binary, " -o " + opts if opts else ""))
    for tool in tools:
        a = statistics.median(times[(tool, "A")])
        b = statistics.median(times[(tool, "B")])
        print("  %-4s A %.3f s  B %.3f s  B / A %.2f  (medians of %d)" % (
            tool, a, b, b / a, args.rounds))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""imapfuse benchmark driver (started by bench/run.sh; see its header).

Runs, side by side in one run against one private Dovecot and one corpus:
  a. raw limit: rawfetch bulk (UID FETCH 1:* BODY.PEEK[]) and metadata
     (UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS)) per mailbox
  b. FUSE floor: floorfs over a local copy of the same tree
  c. imapfuse cold: ls -lR, grep -r, rg -j4, each on a fresh mount with an
     empty cache dir
  d. imapfuse warm: remount with the cold grep's cache dir, grep -r twice;
     rg -j4 on another remount with that cache dir
  e. grep -r over the plain local copy
  f. mbsync full sync into a maildir, then grep -r over it
  g. a, c and d again through latency_proxy (default 10 ms each way)
and prints a table of seconds, the target ratios with PASS/FAIL, and
details (match counts, server traffic from Dovecot's log, errors).
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_corpus  # noqa: E402
from farlab import scan_cmd  # noqa: E402

ENV = dict(os.environ, LC_ALL="C", LANG="C")


class BenchError(RuntimeError):
    pass


class NoCacheDirOption(Exception):
    pass


def say(msg):
    print("[bench] " + msg, flush=True)


def read_loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def damon_note():
    """A note if the kernel proactively reclaims idle memory (DAMON pageout),
    which empties page caches that were not touched for a while."""
    base = "/sys/kernel/mm/damon/admin/kdamonds"

    def subdirs(d):
        try:
            return [os.path.join(d, x) for x in sorted(os.listdir(d))
                    if os.path.isdir(os.path.join(d, x))]
        except OSError:
            return []

    def read(*p):
        try:
            with open(os.path.join(*p)) as f:
                return f.read().strip()
        except OSError:
            return ""

    for kd in subdirs(base):
        if read(kd, "state") != "on":
            continue
        for ctx in subdirs(os.path.join(kd, "contexts")):
            for sch in subdirs(os.path.join(ctx, "schemes")):
                if read(sch, "action") != "pageout":
                    continue
                try:
                    idle = "~%.0f s" % (
                        int(read(sch, "access_pattern", "age", "min")) *
                        int(read(ctx, "monitoring_attrs", "intervals",
                                 "aggr_us")) / 1e6)
                except ValueError:
                    idle = "a while"
                return ("this kernel runs DAMON proactive reclaim (pageout of "
                        "memory idle for %s): page cache that a step does not "
                        "touch for that long is dropped, so second passes "
                        "after long first passes (e.g. through the proxy) may "
                        "have to fetch again; Dovecot's files are re-read "
                        "before each step" % idle)
    return None


def median(xs):
    """Median of the measured values (None = timed out) or None."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def runs_note(xs):
    if len(xs) == 1:
        return "1 run"
    return "median of %d: %s" % (len(xs), ", ".join(
        "TIMEOUT" if x is None else "%.3f" % x for x in xs))


def fmt_s(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v < 10:
        return "%.3f" % v
    if v < 100:
        return "%.2f" % v
    return "%.1f" % v


# --------------------------------------------------------------------------
# process bookkeeping (also read by run.sh's trap)

class Procs:
    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, "pids")
        self.live = {}

    def add(self, pid, what):
        self.live[pid] = what
        with open(self.path, "a") as f:
            f.write("%d %s\n" % (pid, what))

    def remove(self, pid):
        self.live.pop(pid, None)


def mounted(path):
    """The mountinfo "major:minor" of a mount at path, or None (no stat)."""
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                mp = parts[4].replace("\\040", " ")
                if mp == path:
                    return parts[2]
    except OSError:
        pass
    return None


def kill_group(p, sig=signal.SIGKILL):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Mount:
    """A FUSE filesystem process (floorfs or imapfuse) mounted with -f."""

    def __init__(self, bench, kind, cmd, mnt, logpath):
        self.bench = bench
        self.kind = kind
        self.mnt = mnt
        self.logpath = logpath
        os.makedirs(mnt, exist_ok=True)
        if mounted(mnt):
            raise BenchError("%s is already mounted" % mnt)
        self.logf = open(logpath, "ab")
        self.log_start = self.logf.tell()  # the log file is shared per label
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf,
                                     start_new_session=True, env=ENV)
        bench.procs.add(self.proc.pid, kind)
        deadline = t0 + 90
        while time.monotonic() < deadline:
            if mounted(mnt):
                self.mount_seconds = time.monotonic() - t0
                bench.mounts.append(self)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self._stop_proc()
        self.logf.close()
        text = self.log_text()
        raise BenchError("%s did not mount (exit %s): %s" % (
            kind, self.proc.returncode, text.strip()[-600:] or "(no output)"))

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                f.seek(self.log_start)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def peak_rss_kb(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def abort(self):
        """Last resort: abort the FUSE connection (unblocks stuck readers)."""
        dev = mounted(self.mnt)
        if dev:
            minor = dev.split(":")[1]
            try:
                with open("/sys/fs/fuse/connections/%s/abort" % minor, "w") as f:
                    f.write("1")
            except OSError:
                pass

    def _stop_proc(self):
        if self.proc.poll() is None:
            kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                kill_group(self.proc, signal.SIGKILL)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self.bench.procs.remove(self.proc.pid)

    def unmount(self):
        """Unmounts; returns a note if it was not clean."""
        note = None
        for i in range(20):
            if not mounted(self.mnt):
                break
            r = subprocess.run(["fusermount3", "-u", self.mnt],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=30)
            if r.returncode == 0:
                break
            time.sleep(0.25)
        else:
            note = "unmount failed; forced"
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            note = note or "did not exit after unmount; killed"
        self._stop_proc()
        if mounted(self.mnt):
            self.abort()
            subprocess.run(["fusermount3", "-u", "-z", self.mnt],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30)
            note = note or "forced unmount"
        rc = self.proc.returncode
        if rc not in (0, None) and note is None:
            note = "exit status %s" % rc
        self.logf.close()
        if self in self.bench.mounts:
            self.bench.mounts.remove(self)
        return note


# --------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.a = args
        self.run_dir = args.run_dir
        os.makedirs(self.run_dir, exist_ok=True)
        self.procs = Procs(self.run_dir)
        self.mounts = []
        self.dv = None
        self.proxy = None
        self.proxy_port = None
        self.res = {}       # key -> dict(seconds=..., note=...)
        self.details = []   # lines
        self.problems = []  # odd things worth reporting
        self.disk_cache = True
        self.disk_cache_note = None
        self.seq = 0
        self.t_start = time.monotonic()
        self.t_setup = 0.0
        self.total_seconds = None
        self.man = None
        self.complete = False

    # ---------------------------------------------------------- helpers
    def path(self, *p):
        return os.path.join(self.run_dir, *p)

    def new_dir(self, prefix):
        self.seq += 1
        d = self.path("%s-%02d" % (prefix, self.seq))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def record(self, key, seconds, note="", **extra):
        d = {"seconds": seconds, "note": note}
        d.update(extra)
        self.res[key] = d
        say("%-28s %10s  %s" % (key, fmt_s(seconds), note))

    def dovecot_log_pos(self):
        try:
            return os.path.getsize(self.dv.log_path)
        except OSError:
            return 0

    def dovecot_traffic(self, pos):
        """Sessions, bytes out/in, bodies fetched since log offset pos."""
        time.sleep(0.3)  # imap processes log on disconnect
        try:
            with open(self.dv.log_path, "rb") as f:
                f.seek(pos)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        out = inn = bodies = sessions = 0
        for m in re.finditer(r"\bin=(\d+) out=(\d+)(?:.*?body_count=(\d+))?",
                             text):
            sessions += 1
            inn += int(m.group(1))
            out += int(m.group(2))
            bodies += int(m.group(3) or 0)
        errs = [l for l in text.splitlines()
                if re.search(r"\b(Error|Fatal|Panic):", l)]
        return {"sessions": sessions, "out": out, "in": inn,
                "bodies": bodies, "errors": errs}

    def run_timed(self, name, cmd, out_path, timeout=None, mount=None):
        """Runs cmd (stdout to out_path); returns (seconds|None, rc, stderr).

        The child is reaped with a blocking wait4() (Popen.wait(timeout)
        polls with sleeps of up to 50 ms, which would quantize the timings);
        a timer thread enforces the timeout by killing the process group.
        """
        timeout = timeout or self.a.op_timeout
        err_path = out_path + ".err"
        fired = threading.Event()

        def on_timeout():
            fired.set()
            kill_group(p)
            time.sleep(5)
            if mount is not None and p.returncode is None:
                mount.abort()  # a reader stuck in the filesystem

        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, start_new_session=True, env=ENV)
            self.procs.add(p.pid, os.path.basename(cmd[0]))
            timer = threading.Timer(timeout, on_timeout)
            timer.daemon = True
            timer.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)
                secs = time.perf_counter() - t0
            except BaseException:
                kill_group(p)  # interrupted: do not leave it running
                raise
            finally:
                timer.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
            self.procs.remove(p.pid)
        self.cpu_seconds = ru.ru_utime + ru.ru_stime
        if fired.is_set():
            secs = None
        with open(err_path, "rb") as f:
            errtext = f.read().decode("utf-8", "replace")
        return secs, p.returncode, errtext

    # ---------------------------------------------------------- output checks
    @staticmethod
    def ls_summary(path):
        files = total = 0
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"-"):
                    parts = line.split(None, 8)
                    if len(parts) >= 9:
                        files += 1
                        total += int(parts[4])
        return files, total

    @staticmethod
    def grep_summary(path):
        lines = 0
        files = set()
        with open(path, "rb") as f:
            for line in f:
                lines += 1
                files.add(line.split(b":", 1)[0])
        return lines, len(files)

    # ---------------------------------------------------------- steps
    def rawfetch(self, port, modes, label):
        cmd = [self.a.rawfetch, "-p", str(port), "-u", bench_corpus.USER,
               "-P", self.pwfile] + modes
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=self.a.op_timeout)
        if r.returncode != 0:
            raise BenchError("rawfetch %s (%s) failed: %s" % (
                " ".join(modes), label, r.stderr.strip()))
        return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]

    def warm_server(self):
        """Reads every message once (untimed, direct port) so that Dovecot's
        maildir files are in the page cache when the next step starts.
        Needed on machines that reclaim idle page cache early (see
        damon_note); cheap elsewhere (~1 s per 150 MB)."""
        if not self.a.no_rewarm:
            self.rawfetch(self.dv.port, ["--bulk"], "warm-up")

    def raw_step(self, port, label):
        """a: median of --raw-repeat runs of bulk and of metadata fetch."""
        suffix = "" if label == "loopback" else "@proxy"
        self.warm_server()
        rtt = self.rawfetch(port, ["--noop", "50"], label)[0]
        self.res["rtt" + suffix] = rtt
        for mode, key in (("--bulk", "raw_bulk"), ("--meta", "raw_meta")):
            runs = []
            for _ in range(self.a.raw_repeat):
                runs.append(self.rawfetch(port, [mode], label)[0])
            secs = statistics.median(r["seconds"] for r in runs)
            r0 = runs[0]
            if r0["messages"] != self.man["messages"]:
                self.problems.append("rawfetch %s %s saw %d messages, corpus "
                                     "has %d" % (mode, label, r0["messages"],
                                                 self.man["messages"]))
            note = "median of %d: %s" % (len(runs), ", ".join(
                "%.3f" % r["seconds"] for r in runs))
            if mode == "--bulk":
                note += "; %.1f MB/s" % (r0["literal_bytes"] / 1e6 / secs)
            self.record(key + suffix, secs, note)
        if label == "loopback" and not self.a.skip_each:
            r = self.rawfetch(port, ["--each"], label)[0]
            self.record("raw_each", r["seconds"],
                        "%.3f ms per message" % (
                            1e3 * r["seconds"] / max(1, r["messages"])))

    def floor_step(self):
        """b: floorfs over the local copy (fresh mount per first pass)."""
        tree = os.path.join(self.cdir, "tree")
        cmd = lambda mnt: [self.a.floorfs, "-f", tree, mnt]  # noqa: E731
        n = self.a.floor_repeat
        # ls -lR, each on a fresh mount
        times = []
        for i in range(n):
            m = Mount(self, "floorfs", cmd(self.path("mnt-floor")),
                      self.path("mnt-floor"), self.path("floorfs.log"))
            secs, rc, err = self.run_timed("floor ls", ["ls", "-lR", m.mnt],
                                           self.path("floor-ls.out"), mount=m)
            times.append(secs)
            m.unmount()
        self.floor_ls = self.ls_summary(self.path("floor-ls.out"))
        self.check_ls("floor_ls", self.floor_ls)
        self.record("floor_ls", median(times), "%d files, %.1f MB; %s" % (
            self.floor_ls[0], self.floor_ls[1] / 1e6, runs_note(times)))
        # grep #1 on a fresh mount (n times); grep #2.. on the last mount
        times = []
        for i in range(n):
            m = Mount(self, "floorfs", cmd(self.path("mnt-floor")),
                      self.path("mnt-floor"), self.path("floorfs.log"))
            out = self.path("floor-grep1.out")
            secs, rc, err = self.run_timed(
                "floor_grep1", scan_cmd("grep", self.needle, m.mnt), out, mount=m)
            self.check_grep("floor_grep1", out, rc, err)
            times.append(secs)
            if i < n - 1:
                m.unmount()
        self.record("floor_grep1", median(times), "%s; %s" % (
            self.res_note("floor_grep1"), runs_note(times)))
        times = []
        for i in range(self.a.pass_repeat):
            out = self.path("floor-grep2.out")
            secs, rc, err = self.run_timed(
                "floor_grep2", scan_cmd("grep", self.needle, m.mnt), out, mount=m)
            self.check_grep("floor_grep2", out, rc, err)
            times.append(secs)
        m.unmount()
        self.record("floor_grep2", median(times), "%s; %s" % (
            self.res_note("floor_grep2"), runs_note(times)))
        # rg -j4 on a fresh mount (reference for the imapfuse rg)
        if self.rg:
            m = Mount(self, "floorfs", cmd(self.path("mnt-floor")),
                      self.path("mnt-floor"), self.path("floorfs.log"))
            out = self.path("floor-rg.out")
            secs, rc, err = self.run_timed("floor_rg", self.rg_cmd(m.mnt), out,
                                           mount=m)
            self.check_grep("floor_rg", out, rc, err)
            self.record("floor_rg", secs, self.res_note("floor_rg"))
            m.unmount()

    def rg_cmd(self, d):
        return scan_cmd("rg", self.needle, d, self.rg)

    def check_ls(self, key, summ):
        files, total = summ
        if files != self.man["messages"] or total != self.man["bytes"]:
            self.problems.append(
                "%s: listing shows %d files / %d bytes; the corpus has %d / %d"
                % (key, files, total, self.man["messages"], self.man["bytes"]))
            return False
        return True

    def check_grep(self, key, out, rc, err):
        lines, files = self.grep_summary(out)
        want = self.man["needle_messages"]
        self.matches = getattr(self, "matches", {})
        self.matches[key] = (lines, files, rc)
        errlines = [l for l in err.splitlines() if l.strip()]
        ok = lines == want and rc in (0, 1) and not errlines
        if not ok:
            msg = "%s: %d matching lines in %d files (expected %d), exit %s" % (
                key, lines, files, want, rc)
            if errlines:
                msg += "; %d stderr lines, first: %s" % (
                    len(errlines), errlines[0][:200])
            self.problems.append(msg)
        return ok

    def res_note(self, key):
        lines, files, rc = self.matches[key]
        return "%d/%d matches" % (lines, self.man["needle_messages"])

    # ---------------------------------------------------------- imapfuse
    def imapfuse_mount(self, port, cache_dir, label, extra=""):
        mnt = self.path("mnt-imapfuse")
        opts = "password_file=%s,tls=off" % self.pwfile
        if extra:
            opts += "," + extra
        if self.a.imapfuse_opts:
            opts += "," + self.a.imapfuse_opts
        if self.disk_cache and cache_dir:
            try:
                return Mount(self, "imapfuse", [
                    self.a.imapfuse, "-f", "-o", opts + ",cache_dir=" + cache_dir,
                    "imap://%s@127.0.0.1:%d" % (bench_corpus.USER, port), mnt],
                    mnt, self.path("imapfuse-%s.log" % label))
            except BenchError as e:
                text = str(e)
                if re.search(r"(unknown|unrecogni[sz]ed|invalid|unsupported)"
                             r" option", text, re.I):
                    self.disk_cache = False
                    self.disk_cache_note = (
                        "imapfuse rejected -o cache_dir (%s): ran without it; "
                        "warm results are 'no disk cache yet'" %
                        text.strip().splitlines()[-1][-160:])
                    say(self.disk_cache_note)
                else:
                    raise
        return Mount(self, "imapfuse", [
            self.a.imapfuse, "-f", "-o", opts,
            "imap://%s@127.0.0.1:%d" % (bench_corpus.USER, port), mnt],
            mnt, self.path("imapfuse-%s.log" % label))

    def imapfuse_op(self, m, key, what, label):
        """Runs ls / grep / rg on mount m; records the result under key."""
        out = self.path("%s.out" % key.replace("@", "-"))
        if what == "ls":
            cmd = ["ls", "-lR", m.mnt]
        elif what == "grep":
            cmd = scan_cmd("grep", self.needle, m.mnt)
        else:
            cmd = self.rg_cmd(m.mnt)
        pos = self.dovecot_log_pos()
        secs, rc, err = self.run_timed(key, cmd, out, mount=m)
        notes = []
        if secs is None:
            notes.append("TIMEOUT after %ds" % self.a.op_timeout)
            self.problems.append("%s: timed out after %d s" % (
                key, self.a.op_timeout))
        if what == "ls":
            summ = self.ls_summary(out)
            if self.check_ls(key, summ):
                notes.append("%d files" % summ[0])
            else:
                notes.append("LISTING MISMATCH %d files/%d B" % summ)
            errl = [l for l in err.splitlines() if l.strip()]
            if errl or rc != 0:
                self.problems.append("%s: ls exit %s, %d stderr lines, first: %s"
                                     % (key, rc, len(errl),
                                        errl[0][:200] if errl else ""))
        else:
            ok = self.check_grep(key, out, rc, err)
            notes.append(self.res_note(key) + ("" if ok else " (MISMATCH)"))
        return secs, notes, pos

    def finish_mount(self, m, pos, label):
        """Unmounts; adds traffic, RSS and log problems to the notes."""
        rss = m.peak_rss_kb()
        text_before = m.log_text()
        note = m.unmount()
        traffic = self.dovecot_traffic(pos)
        lines = [l for l in text_before.splitlines()
                 if re.search(r"warning|critical|error", l, re.I)]
        if lines:
            self.problems.append("imapfuse (%s) logged %d warning/error lines, "
                                 "e.g.: %s" % (label, len(lines), lines[0][:240]))
        if note:
            self.problems.append("imapfuse (%s): %s" % (label, note))
        if traffic and traffic["errors"]:
            self.problems.append("dovecot logged %d errors during %s, e.g.: %s"
                                 % (len(traffic["errors"]), label,
                                    traffic["errors"][0][:240]))
        return rss, traffic

    def traffic_note(self, t):
        if not t:
            return ""
        return "server sent %.1f MB (%.2fx corpus) in %d sessions, %d bodies" % (
            t["out"] / 1e6, t["out"] / max(1, self.man["bytes"]),
            t["sessions"], t["bodies"])

    def cache_usage(self, key, cache):
        """Notes the size of a cache dir once done with it, then removes it."""
        total = files = 0
        for root, _dirs, names in os.walk(cache):
            for n in names:
                try:
                    total += os.lstat(os.path.join(root, n)).st_size
                    files += 1
                except OSError:
                    pass
        self.cache_sizes = getattr(self, "cache_sizes", {})
        self.cache_sizes[key] = (files, total)
        shutil.rmtree(cache, ignore_errors=True)

    def mount_run(self, port, cache, label, key, what, extra=None):
        """One mount with cache dir cache, one command on it.  Returns
        (secs, notes, rss_kb, traffic, mount_seconds)."""
        self.warm_server()
        m = self.imapfuse_mount(port, cache, label, extra=extra)
        secs, notes, pos = self.imapfuse_op(m, key, what, label)
        rss, tr = self.finish_mount(m, pos, label)
        return secs, notes, rss, tr, m.mount_seconds

    def cold_run(self, port, label, key, what, extra=None):
        """mount_run with a new empty cache dir; returns its results and
        the cache dir."""
        cache = self.new_dir("cache")
        return self.mount_run(port, cache, label, key, what, extra) + (cache,)

    def imapfuse_step(self, port, label, ro=False):
        """c and d, through port (Dovecot's or the proxy's); with ro, h:
        the same greps on -o ro mounts (keys "..._ro")."""
        sfx = ("_ro" if ro else "") + ("" if label == "loopback" else "@proxy")
        mode = "ro" if ro else None
        if ro:
            label += "-ro"
        # c1: cold ls -lR; c1b: the same without extended attributes (-o ro
        # changes nothing there: ls opens no file)
        for key, extra in (() if ro else (("cold_ls", None), ("cold_ls_noxattr", "xattr=off"))):
            secs, notes, rss, tr, mount_s, cache = self.cold_run(
                port, label, key + sfx, "ls", extra)
            self.cache_usage(key + sfx, cache)
            self.record(key + sfx, secs, "; ".join(notes),
                        traffic=tr, rss_kb=rss, mount_s=mount_s)
        # c2 + d, --cold-repeat times (medians, as for the floor): cold
        # grep -r on a fresh mount with an empty cache dir, then a remount
        # with that cache dir (warm grep), then second passes on it.
        n = self.a.cold_repeat
        cold, warm, second, rsss, rg_times, warm_rg = [], [], [], [], [], []
        for _ in range(n):
            secs, cold_notes, rss, cold_tr, cold_mount, cache = self.cold_run(
                port, label, "cold_grep" + sfx, "grep", mode)
            cold.append(secs)
            rsss.append(rss or 0)
            self.warm_server()
            m = self.imapfuse_mount(port, cache, label, extra=mode)
            warm_tag = "" if self.disk_cache else "no disk cache yet; "
            secs1, notes1, pos = self.imapfuse_op(m, "warm_grep" + sfx, "grep",
                                                  label)
            warm.append(secs1)
            for i in range(self.a.pass_repeat):
                secs2, notes2, _ = self.imapfuse_op(m, "second_grep" + sfx, "grep",
                                                    label)
                second.append(secs2)
            wrss, wtr = self.finish_mount(m, pos, label)
            # d2: rg -j4 on another remount with the same cache dir: the
            # two tools compared with no server work on the machine
            if self.rg:
                secs3, wrg_notes, _, wrg_tr, _ = self.mount_run(
                    port, cache, label, "warm_rg" + sfx, "rg", mode)
                warm_rg.append(secs3)
            self.cache_usage("warm_grep" + sfx, cache)
            # c3: cold rg -j4 on a fresh mount, right after each cold grep
            # so that the two are compared at the same moment of a noisy
            # machine (all of rg's runs after all of grep's put any drift
            # into their ratio)
            if self.rg:
                secs, rg_notes, rg_rss, rg_tr, rg_mount, cache = self.cold_run(
                    port, label, "cold_rg" + sfx, "rg", mode)
                self.cache_usage("cold_rg" + sfx, cache)
                rg_times.append(secs)
        rss = max(rsss) if any(rsss) else None
        self.record("cold_grep" + sfx, median(cold), "; ".join(cold_notes + [
            "peak RSS %.1f MB" % (rss / 1024.0) if rss else "RSS n/a",
            runs_note(cold)]),
            traffic=cold_tr, rss_kb=rss, mount_s=cold_mount)
        self.record("warm_grep" + sfx, median(warm), warm_tag + "; ".join(
            notes1 + [runs_note(warm)]),
            traffic=wtr, rss_kb=wrss, mount_s=m.mount_seconds)
        self.record("second_grep" + sfx, median(second),
                    "; ".join(notes2 + [runs_note(second)]))
        if self.rg:
            self.record("cold_rg" + sfx, median(rg_times), "; ".join(
                rg_notes + [runs_note(rg_times)]), traffic=rg_tr,
                rss_kb=rg_rss, mount_s=rg_mount)
            self.record("warm_rg" + sfx, median(warm_rg), warm_tag + "; ".join(
                wrg_notes + [runs_note(warm_rg)]), traffic=wrg_tr)

    def local_step(self):
        """e: grep -r over the plain local copy (page cache warm)."""
        tree = os.path.join(self.cdir, "tree")
        out = self.path("local-grep.out")
        # warm the page cache first (so this is the in-memory best case)
        self.run_timed("warm", ["grep", "-r", "-c", "x-no-such-string", tree],
                       self.path("local-warm.out"))
        secs, rc, err = self.run_timed(
            "local_grep", scan_cmd("grep", self.needle, tree), out)
        self.check_grep("local_grep", out, rc, err)
        self.record("local_grep", secs, self.res_note("local_grep"))

    def mbsync_step(self):
        """f: mbsync the whole account into a fresh maildir, then grep -r."""
        mb = shutil.which("mbsync")
        if not mb:
            self.record("mbsync", None, "mbsync not installed (apt-get install isync)")
            return
        # --cold-repeat full syncs, each into a new empty maildir (medians,
        # as for imapfuse's cold runs). The maildirs are deleted only at the
        # end: 10,000 files deleted just before 10,000 are created make
        # ext4's inode allocation slow, which would not be mbsync's fault.
        dirs = []
        syncs, greps, totals = [], [], []
        for _ in range(self.a.cold_repeat):
            d = self.new_dir("mbsync-maildir")
            dirs.append(d)
            cfg = self.path("mbsyncrc")
            with open(cfg, "w") as f:
                f.write("""# written by bench/bench.py
FSync no

IMAPAccount bench
Host 127.0.0.1
Port {port}
User {user}
PassCmd "cat {pw}"
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account bench

MaildirStore local
Path {d}/
Inbox {d}/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
""".format(port=self.dv.port, user=bench_corpus.USER, pw=self.pwfile, d=d))
            self.warm_server()
            pos = self.dovecot_log_pos()
            out = self.path("mbsync.out")
            secs, rc, err = self.run_timed("mbsync", [mb, "-q", "-c", cfg, "-a"], out)
            tr = self.dovecot_traffic(pos)
            if rc != 0:
                self.problems.append("mbsync exit %s: %s" % (rc, err.strip()[-300:]))
            out = self.path("mbsync-grep.out")
            secs2, rc, err = self.run_timed(
                "mbsync_grep", scan_cmd("grep", self.needle, d), out)
            self.check_grep("mbsync_grep", out, rc, err)
            syncs.append(secs)
            greps.append(secs2)
            if secs is not None and secs2 is not None:
                totals.append(secs + secs2)
        self.record("mbsync", median(syncs), "FSync no; " + self.traffic_note(tr) +
                    "; " + runs_note(syncs), traffic=tr)
        self.record("mbsync_grep", median(greps), self.res_note("mbsync_grep") +
                    "; " + runs_note(greps))
        if totals:
            self.record("mbsync_total", median(totals), "sync + grep; " + runs_note(totals))
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    # ---------------------------------------------------------- proxy
    def start_proxy(self):
        logp = self.path("proxy.log")
        errf = open(self.path("proxy.err"), "wb")
        self.proxy = subprocess.Popen(
            [self.a.latency_proxy, "--target-port", str(self.dv.port),
             "--delay-ms", str(self.a.delay_ms), "--log", logp,
             "--max-seconds", str(4 * 3600)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
            start_new_session=True, text=True)
        errf.close()
        self.procs.add(self.proxy.pid, "latency_proxy")
        line = self.proxy.stdout.readline()
        m = re.match(r"LISTEN \S+ (\d+)", line or "")
        if not m:
            raise BenchError("latency_proxy did not start: %r" % line)
        self.proxy_port = int(m.group(1))

    def stop_proxy(self):
        p = self.proxy
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                kill_group(p)
                p.wait(5)
        self.procs.remove(p.pid)
        self.proxy = None

    def wait_idle(self, limit):
        """Waits (at most limit s) until the 1-minute load average is < 1."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            la = float(read_loadavg().split()[0])
            if la < 1.0:
                say("load average %.2f: starting" % la)
                return
            say("load average %.2f: waiting for the machine to calm down "
                "(--wait-idle, %d s left)" % (la, limit - (time.monotonic() - t0)))
            time.sleep(min(15, max(1, limit - (time.monotonic() - t0))))
        self.problems.append("the machine stayed busy (load average %s) during "
                             "--wait-idle: timings are noisy" % read_loadavg())

    # ---------------------------------------------------------- main flow
    def run(self):
        a = self.a
        t_start = self.t_start
        self.rg = shutil.which("rg")
        if not self.rg:
            say("rg not found: rg rows are skipped (apt-get install ripgrep)")
        self.dv, self.cdir, self.man = bench_corpus.prepare(
            a.work_dir, a.messages, a.seed, a.rawfetch,
            register_pid=lambda pid, what: self.procs.add(pid, what))
        self.pwfile = os.path.join(self.cdir, "password")
        self.dv_log_start = self.dovecot_log_pos()
        self.load_start = read_loadavg()
        self.needle = self.man["needle"]
        say("dovecot on 127.0.0.1:%d; needle %s in %d messages" % (
            self.dv.port, self.needle, self.man["needle_messages"]))
        if a.wait_idle > 0:
            self.wait_idle(a.wait_idle)
            self.load_start = read_loadavg()
        # warm Dovecot (page cache, indexes) so no step pays for disk reads
        self.rawfetch(self.dv.port, ["--bulk", "--meta"], "warm-up")
        self.t_setup = time.monotonic() - t_start

        say("a. raw limit (loopback)")
        self.raw_step(self.dv.port, "loopback")
        say("b. FUSE floor (floorfs)")
        self.floor_step()
        say("c/d. imapfuse (loopback)")
        self.imapfuse_step(self.dv.port, "loopback")
        if not a.skip_ro:
            say("h. imapfuse -o ro (loopback)")
            self.imapfuse_step(self.dv.port, "loopback", ro=True)
        say("e. grep -r over the local copy")
        self.local_step()
        if a.skip_mbsync:
            self.record("mbsync", None, "skipped (--skip-mbsync)")
        else:
            say("f. mbsync + grep -r")
            self.mbsync_step()
        if a.skip_proxy:
            say("g. skipped (--skip-proxy)")
        else:
            say("g. through latency_proxy (%.1f ms each way)" % a.delay_ms)
            self.start_proxy()
            try:
                self.raw_step(self.proxy_port, "proxy")
                self.imapfuse_step(self.proxy_port, "proxy")
                if not a.skip_ro:
                    self.imapfuse_step(self.proxy_port, "proxy", ro=True)
            finally:
                self.stop_proxy()
        self.total_seconds = time.monotonic() - t_start

    def cleanup(self):
        for m in list(self.mounts):
            try:
                m.unmount()
            except Exception as e:  # keep going: everything must stop
                say("cleanup: %s: %s" % (m.mnt, e))
        try:
            self.stop_proxy()
        except Exception as e:
            say("cleanup: proxy: %s" % e)
        if self.dv is not None:
            errs = []
            try:
                with open(self.dv.log_path, "rb") as f:
                    f.seek(getattr(self, "dv_log_start", 0))
                    errs = [l for l in f.read().decode("utf-8", "replace")
                            .splitlines()
                            if re.search(r"\b(Error|Fatal|Panic):", l)]
            except OSError:
                pass
            try:
                self.dv.stop()
            except Exception as e:
                say("cleanup: dovecot: %s" % e)
            self.dovecot_errors = errs

    # ---------------------------------------------------------- report
    def sec(self, key):
        r = self.res.get(key)
        return r["seconds"] if r else None

    def ratio_rows(self):
        rows = []

        # kind "max": at most target; "less": below it (rg faster than
        # mbsync + grep).  Rows carry the target as text.
        def add(label, num, den, target, kind="max", status=None):
            text = "" if target is None else (
                "%s %.2f" % ("<=" if kind == "max" else "<", target))
            if num is None or den is None or den <= 0:
                rows.append((label, None, text, status or "n/a"))
                return
            v = num / den
            if status is None:
                if target is None:
                    status = "info"
                else:
                    ok = v <= target if kind == "max" else v < target
                    status = "PASS" if ok else "FAIL"
            rows.append((label, v, text, status))

        s = self.sec
        fl1, fl2, fll = s("floor_grep1"), s("floor_grep2"), s("floor_ls")
        for sfx, where in (("", "loopback"), ("@proxy", "20 ms RTT")):
            if sfx and self.a.skip_proxy:
                continue
            if sfx:
                where = "%.0f ms RTT" % (2 * self.a.delay_ms)

            def plus(x, y):
                return None if x is None or y is None else x + y
            add("cold ls -lR / (floor ls -lR + raw meta), %s" % where,
                s("cold_ls" + sfx), plus(fll, s("raw_meta" + sfx)), 1.5)
            add("cold ls -lR xattr=off / (floor ls -lR + raw meta), %s" % where,
                s("cold_ls_noxattr" + sfx), plus(fll, s("raw_meta" + sfx)), 1.5)
            for m, mname in (("", ""), ("_ro", "-o ro ")):
                if m and self.a.skip_ro:
                    continue
                k = lambda key: s(key + m + sfx)  # noqa: E731
                add("%scold grep / (floor grep#1 + raw bulk), %s" % (mname, where),
                    k("cold_grep"), plus(fl1, s("raw_bulk" + sfx)), 1.25)
                add("%swarm grep after remount / floor grep#1, %s" % (mname, where),
                    k("warm_grep"), fl1, 1.25,
                    status=None if self.disk_cache else "no disk cache yet")
                add("%ssecond grep (same mount) / floor grep#2, %s" % (mname, where),
                    k("second_grep"), fl2, 1.1)
                add("%srg -j4 cold / grep cold, %s" % (mname, where),
                    k("cold_rg"), k("cold_grep"), 1.0)
                add("%srg -j4 warm / grep warm (no server work), %s" % (mname, where),
                    k("warm_rg"), k("warm_grep"), None)
        add("rg -j4 cold / (mbsync + grep), loopback",
            s("cold_rg"), s("mbsync_total"), 1.0, kind="less")
        if not self.a.skip_ro:
            add("-o ro rg -j4 cold / (mbsync + grep), loopback",
                s("cold_rg_ro"), s("mbsync_total"), 1.0, kind="less")
        return rows

    ROWS = [
        ("a", "raw bulk fetch: UID FETCH 1:* BODY.PEEK[] per mailbox", "raw_bulk", True),
        ("a", "raw metadata fetch: UID FETCH 1:* (UID RFC822.SIZE ...)", "raw_meta", True),
        ("a", "(diagnostic) raw UID FETCH n BODY.PEEK[], one message at a time", "raw_each", False),
        ("b", "floor: ls -lR (fresh mount)", "floor_ls", False),
        ("b", "floor: grep -r #1 (fresh mount)", "floor_grep1", False),
        ("b", "floor: grep -r #2.. (same mount)", "floor_grep2", False),
        ("b", "floor: rg -j4 (fresh mount)", "floor_rg", False),
        ("c", "imapfuse cold: ls -lR", "cold_ls", True),
        ("c", "imapfuse cold: ls -lR, -o xattr=off", "cold_ls_noxattr", True),
        ("c", "imapfuse cold: grep -r", "cold_grep", True),
        ("c", "imapfuse cold: rg -j4", "cold_rg", True),
        ("d", "imapfuse warm: grep -r after remount (cache dir kept)", "warm_grep", True),
        ("d", "imapfuse warm: second grep -r.. (same mount)", "second_grep", True),
        ("d", "imapfuse warm: rg -j4 after remount", "warm_rg", True),
        ("h", "imapfuse -o ro cold: grep -r", "cold_grep_ro", True),
        ("h", "imapfuse -o ro cold: rg -j4", "cold_rg_ro", True),
        ("h", "imapfuse -o ro warm: grep -r after remount", "warm_grep_ro", True),
        ("h", "imapfuse -o ro warm: second grep -r.. (same mount)", "second_grep_ro", True),
        ("h", "imapfuse -o ro warm: rg -j4 after remount", "warm_rg_ro", True),
        ("e", "grep -r over the plain local copy", "local_grep", False),
        ("f", "mbsync full sync (loopback)", "mbsync", False),
        ("f", "grep -r over the mbsync maildir", "mbsync_grep", False),
        ("f", "mbsync + grep -r", "mbsync_total", False),
    ]

    def report(self, out_md=None):
        a, man = self.a, self.man
        rtt = self.res.get("rtt", {})
        prtt = self.res.get("rtt@proxy", {})
        head = [
            "imapfuse benchmark: %d messages, %.1f MB (median %.1f KB, max %.2f MB,"
            " %d over 1 MB), %d mailboxes, seed %d" % (
                man["messages"], man["bytes"] / 1e6, man["median_size"] / 1024.0,
                man["max_size"] / 1e6, man["over_1mb"], len(man["per_folder"]),
                man["seed"]),
            "imapfuse: %s; cache_dir: %s; needle in %d messages; "
            "NOOP RTT loopback %.3f ms%s" % (
                a.imapfuse_label or a.imapfuse,
                "yes" if self.disk_cache else "NOT SUPPORTED (no disk cache yet)",
                man["needle_messages"], rtt.get("median_ms", float("nan")),
                ", via proxy %.2f ms" % prtt["median_ms"] if prtt else ""),
            "%s, %d cores, load average %s at start, %s at end; Dovecot's "
            "files are read into the page cache before every step; wall time "
            "%.0f s (setup %.0f s)" % (
                time.strftime("%Y-%m-%d %H:%M"), os.cpu_count() or 0,
                getattr(self, "load_start", "?"), read_loadavg(),
                self.total_seconds or time.monotonic() - self.t_start,
                self.t_setup),
        ]
        if not self.complete:
            head.append("INCOMPLETE RUN: stopped early (see problems); "
                        "missing steps show '-'")
        proxy_col = "%.0f ms RTT (s)" % (2 * a.delay_ms)
        table = []
        for step, label, key, has_proxy in self.ROWS:
            r = self.res.get(key)
            if "_rg" in key and not self.rg:
                continue
            lo = r["seconds"] if r else None
            pr = None
            if has_proxy and not a.skip_proxy:
                rp = self.res.get(key + "@proxy")
                pr = rp["seconds"] if rp else None
                if rp and rp["seconds"] is None:
                    pr = "TIMEOUT"
            if r and r["seconds"] is None and "TIMEOUT" in r.get("note", ""):
                lo = "TIMEOUT"
            note = r["note"] if r else "-"
            table.append((step, label, fmt_s(lo),
                          fmt_s(pr) if has_proxy and not a.skip_proxy else "",
                          note))
        ratios = self.ratio_rows()
        rss = self.res.get("cold_grep", {}).get("rss_kb")
        prss = self.res.get("cold_grep@proxy", {}).get("rss_kb")
        details = []
        csz = getattr(self, "cache_sizes", {})
        for key in ("cold_ls", "cold_grep", "warm_grep", "cold_rg", "warm_rg",
                    "cold_grep_ro", "warm_grep_ro", "cold_rg_ro", "warm_rg_ro",
                    "cold_ls@proxy", "cold_grep@proxy", "warm_grep@proxy",
                    "cold_rg@proxy", "warm_rg@proxy", "cold_grep_ro@proxy",
                    "warm_grep_ro@proxy", "cold_rg_ro@proxy", "warm_rg_ro@proxy",
                    "mbsync"):
            r = self.res.get(key)
            if r and r.get("traffic"):
                extra = ""
                if self.disk_cache and key in csz:
                    extra += "; cache dir after: %d files, %.1f MB" % (
                        csz[key][0], csz[key][1] / 1e6)
                if r.get("rss_kb"):
                    extra += "; peak RSS %.1f MB" % (r["rss_kb"] / 1024.0)
                if r.get("mount_s") is not None:
                    extra += "; mount took %.2f s" % r["mount_s"]
                if key.startswith("warm_grep"):
                    extra += " (traffic/RSS cover all greps on that mount)"
                details.append("%s: %s%s" % (key, self.traffic_note(r["traffic"]),
                                             extra))
        if self.disk_cache_note:
            details.append(self.disk_cache_note)
        dn = damon_note()
        if dn:
            details.append(dn)
        for sfx in ("", "@proxy"):
            c, w = self.res.get("cold_grep" + sfx), self.res.get("warm_grep" + sfx)
            if c and w and c.get("traffic") and w.get("traffic"):
                extra = w["traffic"]["bodies"] - c["traffic"]["bodies"]
                if not self.disk_cache:
                    msg = ("warm_grep%s mount: %d bodies fetched for the remount "
                           "grep + %d same-mount passes, %d more than a cold grep"
                           % (sfx, w["traffic"]["bodies"], self.a.pass_repeat,
                              extra))
                    if extra > 0.02 * self.man["messages"]:
                        msg += ": the later passes did not find everything in "
                        msg += "the kernel page cache and fetched again"
                    details.append(msg)
        dverr = getattr(self, "dovecot_errors", [])
        if dverr:
            details.append("dovecot log: %d error lines during the run, e.g. %s" % (
                len(dverr), dverr[0][:200]))

        # ---- text
        w = max(len(t[1]) for t in table)
        lines = head + [""]
        lines.append("%-2s %-*s %11s %13s  %s" % ("", w, "step", "loopback (s)",
                                                  proxy_col if not a.skip_proxy else "",
                                                  "notes"))
        lines.append("-" * (w + 45))
        for step, label, lo, pr, note in table:
            lines.append("%-2s %-*s %11s %13s  %s" % (step, w, label, lo, pr, note))
        lines.append("")
        rw = max(len(r[0]) for r in ratios)
        lines.append("%-*s %8s %8s  %s" % (rw, "ratio (same run)", "value",
                                           "target", "status"))
        lines.append("-" * (rw + 32))
        for label, v, target, status in ratios:
            lines.append("%-*s %8s %8s  %s" % (
                rw, label, "-" if v is None else "%.2f" % v,
                target, status))
        lines.append("%-*s %8s %8s  %s" % (
            rw, "peak RSS of imapfuse during cold grep, loopback",
            "%.1f MB" % (rss / 1024.0) if rss else "-", "", "info"))
        if prss:
            lines.append("%-*s %8s %8s  %s" % (
                rw, "peak RSS of imapfuse during cold grep, proxy",
                "%.1f MB" % (prss / 1024.0), "", "info"))
        lines.append("")
        if details:
            lines.append("details:")
            lines += ["  - " + d for d in details]
        if self.problems:
            lines.append("problems seen:")
            lines += ["  - " + p for p in self.problems]
        else:
            lines.append("problems seen: none (all listings and match counts "
                         "as expected)")
        lines.append("logs and outputs: %s" % self.run_dir)
        text = "\n".join(lines)
        print("\n" + text, flush=True)

        if out_md:
            md = ["# imapfuse benchmark", ""] + ["- " + h for h in head] + [""]
            md.append("| step | measurement | loopback (s) | %s | notes |" % (
                proxy_col if not a.skip_proxy else "proxy"))
            md.append("|---|---|---:|---:|---|")
            for step, label, lo, pr, note in table:
                md.append("| %s | %s | %s | %s | %s |" % (
                    step, label, lo, pr or "", note.replace("|", "/")))
            md += ["", "| ratio (same run) | value | target | status |",
                   "|---|---:|---:|---|"]
            for label, v, target, status in ratios:
                md.append("| %s | %s | %s | %s |" % (
                    label, "-" if v is None else "%.2f" % v,
                    target, status))
            md.append("| peak RSS of imapfuse during cold grep, loopback | %s | | info |"
                      % ("%.1f MB" % (rss / 1024.0) if rss else "-"))
            if prss:
                md.append("| peak RSS of imapfuse during cold grep, proxy | %.1f MB | | info |"
                          % (prss / 1024.0))
            md.append("")
            if details:
                md += ["Details:", ""] + ["- " + d for d in details] + [""]
            md += ["Problems seen:", ""] + (["- " + p for p in self.problems]
                                            or ["- none"])
            with open(out_md, "w") as f:
                f.write("\n".join(md) + "\n")
            say("wrote %s" % out_md)
        with open(self.path("results.json"), "w") as f:
            json.dump({"results": self.res, "ratios": ratios,
                       "problems": self.problems, "manifest": man}, f,
                      indent=1, default=str)


def main():
    ap = argparse.ArgumentParser(description="imapfuse benchmark driver; "
                                 "run it through bench/run.sh")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--quick", action="store_true",
                    help="1,000 messages (smoke run)")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--skip-mbsync", action="store_true")
    ap.add_argument("--skip-proxy", action="store_true")
    ap.add_argument("--skip-ro", action="store_true",
                    help="skip h (the greps again on -o ro mounts)")
    ap.add_argument("--out", help="also write the tables as Markdown")
    ap.add_argument("--delay-ms", type=float, default=10.0,
                    help="proxy delay each way (default 10 = 20 ms RTT)")
    ap.add_argument("--raw-repeat", type=int, default=3,
                    help="runs of each raw fetch (the median is used)")
    ap.add_argument("--floor-repeat", type=int, default=3,
                    help="fresh floorfs mounts for ls -lR and grep #1 (median)")
    ap.add_argument("--pass-repeat", type=int, default=3,
                    help="second-pass greps on the same mount (median)")
    ap.add_argument("--cold-repeat", type=int, default=3,
                    help="imapfuse cold grep / warm grep / cold rg runs, each "
                         "on fresh mounts and cache dirs (median)")
    ap.add_argument("--wait-idle", type=int, default=0, metavar="SECS",
                    help="first wait up to SECS for the 1-minute load average "
                         "to drop below 1 (shared machines)")
    ap.add_argument("--no-rewarm", action="store_true",
                    help="do not re-read Dovecot's files before each step")
    ap.add_argument("--skip-each", action="store_true",
                    help="skip the per-message raw fetch (diagnostic row)")
    ap.add_argument("--op-timeout", type=int, default=600,
                    help="seconds before one measured command is given up")
    ap.add_argument("--imapfuse-opts", default="",
                    help="extra -o options for imapfuse (comma-separated)")
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--imapfuse", required=True)
    ap.add_argument("--imapfuse-label", default="")
    ap.add_argument("--floorfs", required=True)
    ap.add_argument("--rawfetch", required=True)
    ap.add_argument("--latency-proxy", required=True)
    a = ap.parse_args()
    if a.quick:
        a.messages = 1000
    if not 10 <= a.messages <= 200000:
        ap.error("--messages must be 10 to 200000")
    for name in ("raw_repeat", "floor_repeat", "pass_repeat", "cold_repeat"):
        if not 1 <= getattr(a, name) <= 20:
            ap.error("--%s must be 1 to 20" % name.replace("_", "-"))

    def on_term(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    b = Bench(a)
    ok = False
    try:
        b.run()
        ok = True
        b.complete = True
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        b.problems.append("interrupted")
    except (BenchError, subprocess.SubprocessError, OSError) as e:
        say("error: %s" % e)
        b.problems.append("error: %s" % e)
    finally:
        b.cleanup()
    if b.man is not None and b.res:
        b.report(a.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

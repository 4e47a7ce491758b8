#!/usr/bin/env bash
# bench/run.sh - imapfuse benchmark: one run, everything side by side.
#
# usage: bash bench/run.sh [--quick] [--messages N] [--seed S] [--skip-mbsync]
#                          [--skip-proxy] [--out FILE.md] [--delay-ms 10]
#                          [--op-timeout 600] [--imapfuse-opts OPTS]
#                          [--imapfuse-rev REV | --imapfuse-bin PATH]
#                          [--wait-idle S] [--skip-each] [--no-rewarm]
#
# Examples:  bash bench/run.sh --quick              (smoke run, < 2 min)
#            bash bench/run.sh --out bench.md       (full run)
#            bash bench/run.sh --imapfuse-rev HEAD~3 --skip-mbsync
# Time: the default run takes ~3 min with read-ahead in imapfuse, ~12 min
# for a build that does one round trip per message (the proxy steps then
# cost 10,000 x 20 ms per grep), plus ~1 min the first time to make the
# corpus.
#
#   --messages N    corpus size (default 10000, ~150 MB; median ~8 KB,
#                   lognormal tail, ~0.1 % of 1-4 MB messages, 7 mailboxes)
#   --quick         1,000 messages (smoke run)
#   --seed S        corpus seed (default 2); the corpus is generated once per
#                   (N, seed, generator source) and reused afterwards
#   --skip-mbsync   skip f (mbsync)      --skip-proxy  skip g (latency proxy)
#   --skip-ro       skip h (-o ro mounts)
#   --out FILE      also write the tables as Markdown to FILE
#   --delay-ms D    proxy delay each way (default 10 = 20 ms round trip)
#   --op-timeout S  give up one measured command after S seconds (default 600)
#   --imapfuse-opts extra "-o" options for every imapfuse mount
#   --wait-idle S   first wait up to S seconds for the 1-minute load average
#                   to fall below 1 (other work on the machine skews timings;
#                   the load at start and end is printed in any case)
#   --skip-each     skip the diagnostic one-fetch-per-message raw row
#   --no-rewarm     do not re-read Dovecot's files before each step (they
#                   are re-read because some kernels reclaim idle page cache)
#   --raw-repeat/--floor-repeat/--pass-repeat/--cold-repeat N   runs whose
#                   median is shown (raw fetches, fresh floorfs mounts,
#                   same-mount passes, imapfuse cold+warm rounds and cold rg
#                   and mbsync syncs on fresh mounts/caches/maildirs; 3 each)
#   --imapfuse-rev REV  benchmark git revision REV instead of the working
#                   tree: exported with `git archive` (the repository is not
#                   touched) and built in $IMAPFUSE_BENCH_DIR/src/<sha>/
#   --imapfuse-bin PATH use this imapfuse binary as it is
#   By default the working tree is built in build/ (meson + ninja) and used.
#
# What it does (all on loopback, against a private Dovecot it starts):
#   a. raw limit: bench/rawfetch.c logs in and per mailbox does ONE
#      `UID FETCH 1:* (BODY.PEEK[])` (bulk) or ONE
#      `UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS)` (metadata)
#   b. FUSE floor: bench/floorfs.c, an in-memory read-only FUSE fs over a
#      local copy of the same tree (same <mailbox>/<UID>.eml names, CRLF
#      bytes as the server returns them): ls -lR, grep -r twice, rg -j4
#   c. imapfuse cold (fresh mount, new empty -o cache_dir): ls -lR, grep -r,
#      rg -j4, each on its own fresh mount; peak RSS (VmHWM) of the cold grep
#   d. imapfuse warm: remount keeping the cold grep's cache dir, grep -r,
#      then grep -r again on the same mount; rg -j4 on another remount with
#      that cache dir (rg against grep with no server work on the machine)
#   e. grep -r over the plain local copy
#   f. mbsync (isync) full sync into a fresh maildir (FSync no), grep -r on it
#   g. a, c, d again through bench/latency_proxy.c (delay each way, default
#      10 ms = 20 ms round trip)
#   h. c and d's greps and rg again on -o ro mounts (the kernel sends no
#      OPEN, FLUSH or RELEASE per file there), on loopback and through g's
#      proxy
# then prints a table of seconds, the ratios the project targets (PASS/FAIL)
# and details: match counts, bytes Dovecot sent per step (from its log),
# errors seen.  If imapfuse rejects -o cache_dir (not implemented yet), it
# runs without it and marks the warm rows "no disk cache yet".
#
# Requirements: Debian packages dovecot-imapd, fuse3, libfuse3-dev, gcc,
# pkg-config, meson, ninja-build, python3, ripgrep and isync; run as root
# it installs what is missing (contrib/deps.sh), else the rg and mbsync
# rows are skipped when those are missing.
# Runs as root (Dovecot's mail user, FUSE mounts).
#
# Files: data lives in $IMAPFUSE_BENCH_DIR (default /var/tmp/imapfuse-bench):
#   corpus/<key>/   reusable corpus (Dovecot maildirs + local copy), ~2x size
#   bin/            floorfs, rawfetch, latency_proxy (built here with cc)
#   runs/<stamp>/   this run's logs, outputs, results.json; mounts and caches
#                   (caches are removed at the end; logs are kept)
# imapfuse itself is built with `meson setup build && ninja -C build`.
#
# Everything started here (Dovecot, proxy, floorfs, imapfuse mounts) is
# stopped on exit, on error and on Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
WORK=${IMAPFUSE_BENCH_DIR:-/var/tmp/imapfuse-bench}
PY=${PYTHON:-/usr/bin/python3}
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in bench/ or tests/integration/

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  esac
done

# As root, install what is missing first (as the demo and the tests do).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  bash "$REPO/contrib/deps.sh" isync || exit 1
fi
need() { command -v "$1" >/dev/null 2>&1 || { echo "run.sh: missing $1 ($2)" >&2; exit 1; }; }
need cc "apt-get install gcc"
need pkg-config "apt-get install pkg-config"
need fusermount3 "apt-get install fuse3"
need meson "apt-get install meson"
need ninja "apt-get install ninja-build"
[ -x /usr/sbin/dovecot ] || { echo "run.sh: missing dovecot (apt-get install dovecot-imapd)" >&2; exit 1; }
[ -x "$PY" ] || { echo "run.sh: missing $PY" >&2; exit 1; }
pkg-config --exists fuse3 || { echo "run.sh: missing libfuse3-dev" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "run.sh: /dev/fuse is missing: FUSE cannot mount here" >&2; exit 1; }
command -v rg >/dev/null 2>&1 || echo "run.sh: note: rg not installed (apt-get install ripgrep): rg rows skipped"
command -v mbsync >/dev/null 2>&1 || echo "run.sh: note: mbsync not installed (apt-get install isync): f skipped"

mkdir -p "$WORK/bin" "$WORK/runs"
chmod 755 "$WORK"

# ---- arguments that are run.sh's own; the rest go to bench/bench.py
REV="" BIN="" PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --imapfuse-rev) [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }; REV=$2; shift 2 ;;
    --imapfuse-rev=*) REV=${1#*=}; shift ;;
    --imapfuse-bin) [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }; BIN=$2; shift 2 ;;
    --imapfuse-bin=*) BIN=${1#*=}; shift ;;
    *) PASS+=("$1"); shift ;;
  esac
done

# ---- build: imapfuse (meson) and the bench tools (cc)
if [ -n "$BIN" ]; then
  [ -x "$BIN" ] || { echo "run.sh: $BIN is not an executable" >&2; exit 1; }
  IMAPFUSE=$(readlink -f "$BIN")
  LABEL="binary $IMAPFUSE"
elif [ -n "$REV" ]; then
  SHA=$(git -C "$REPO" rev-parse --verify --quiet "$REV^{commit}") ||
    { echo "run.sh: unknown revision $REV" >&2; exit 1; }
  SRC="$WORK/src/$SHA"
  if [ ! -x "$SRC/build/imapfuse" ]; then
    echo "[run.sh] building imapfuse $REV (${SHA:0:10}) in $SRC"
    rm -rf "$SRC" && mkdir -p "$SRC"
    git -C "$REPO" archive --format=tar "$SHA" | tar -x -C "$SRC"
    (cd "$SRC" && meson setup build >"$SRC/meson.log" 2>&1 && ninja -C build imapfuse >"$SRC/ninja.log" 2>&1) ||
      { tail -20 "$SRC/meson.log" "$SRC/ninja.log" >&2 2>/dev/null; echo "run.sh: building $REV failed" >&2; exit 1; }
  fi
  IMAPFUSE="$SRC/build/imapfuse"
  LABEL="$REV = ${SHA:0:10} (git archive)"
else
  echo "[run.sh] building imapfuse (working tree, build/)"
  if [ ! -f "$REPO/build/build.ninja" ]; then
    (cd "$REPO" && meson setup build >/dev/null)
  fi
  if ! ninja -C "$REPO/build" imapfuse >"$WORK/ninja.log" 2>&1; then
    tail -20 "$WORK/ninja.log" >&2
    echo "run.sh: building the working tree failed; try --imapfuse-rev HEAD" >&2
    exit 1
  fi
  IMAPFUSE="$REPO/build/imapfuse"
  SHA=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
  if git --no-optional-locks -C "$REPO" diff --quiet HEAD -- src include meson.build 2>/dev/null &&
     [ -z "$(git --no-optional-locks -C "$REPO" ls-files --others --exclude-standard -- src include 2>/dev/null)" ]; then
    LABEL="working tree = $SHA"
  else
    LABEL="working tree ($SHA + uncommitted changes)"
  fi
fi
CFLAGS_BENCH="-O2 -Wall -Wextra"
build() { # build OUT SRC [flags...]
  local out=$1 src=$2; shift 2
  if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
    echo "[run.sh] cc $(basename "$src")"
    # shellcheck disable=SC2086
    cc $CFLAGS_BENCH "$@" -o "$out.tmp" && mv "$out.tmp" "$out"
  fi
}
build "$WORK/bin/floorfs" "$HERE/floorfs.c" $(pkg-config --cflags fuse3) "$HERE/floorfs.c" $(pkg-config --libs fuse3)
build "$WORK/bin/rawfetch" "$HERE/rawfetch.c" "$HERE/rawfetch.c"
build "$WORK/bin/latency_proxy" "$HERE/latency_proxy.c" -pthread "$HERE/latency_proxy.c"

RUN_DIR="$WORK/runs/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$RUN_DIR"

# ---- cleanup: the driver stops what it started; this is the backstop for
# a driver that died (kill -9, crash): unmount our mounts, stop our pids.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "${DRIVER_PID:-}" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill -TERM "$DRIVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.2; done
  fi
  # mounts under this run's directory
  awk -v d="$RUN_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo 2>/dev/null |
    while read -r mnt; do
      fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null || true
    done
  # processes the driver recorded and that are still ours
  if [ -f "$RUN_DIR/pids" ]; then
    while read -r pid what; do
      [ -r "/proc/$pid/cmdline" ] || continue
      if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$what"; then
        if [ "$what" = dovecot ]; then
          kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        else
          kill -TERM "$pid" 2>/dev/null || true
        fi
      fi
    done <"$RUN_DIR/pids"
  fi
  # caches and mountpoints are big or useless afterwards; logs stay
  rm -rf "$RUN_DIR"/cache-* "$RUN_DIR"/mbsync-maildir-* 2>/dev/null || true
  rmdir "$RUN_DIR"/mnt-* 2>/dev/null || true
  # keep only the 5 newest run directories
  ls -1dt "$WORK"/runs/*/ 2>/dev/null | tail -n +6 | while read -r old; do rm -rf "$old"; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# The driver runs in the background so that this shell can react to
# signals at once (the driver gets its own SIGINT from the terminal).
"$PY" "$HERE/bench.py" --work-dir "$WORK" --run-dir "$RUN_DIR" \
  --imapfuse "$IMAPFUSE" --imapfuse-label "$LABEL" --floorfs "$WORK/bin/floorfs" \
  --rawfetch "$WORK/bin/rawfetch" --latency-proxy "$WORK/bin/latency_proxy" ${PASS[@]+"${PASS[@]}"} &
DRIVER_PID=$!
wait "$DRIVER_PID"

#!/usr/bin/env bash
# The whole test suite, from a fresh clone, as root on Debian 12:
# installs what is missing, builds with -Werror under ASan/UBSan, runs the
# GTest unit tests (meson test) and the pytest integration tests (real
# mounts against a private Dovecot), and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
top=$PWD
# gdb: the threads' stacks of a daemon that does not exit (conftest.py)
bash contrib/deps.sh gdb || exit 1

build=$top/build-test
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" --werror -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debug >/dev/null || { echo "meson setup failed"; echo "0 passed, 1 failed"; exit 1; }
fi
if ! ninja -C "$build" >"$build/ninja.log" 2>&1; then
  cat "$build/ninja.log"
  echo "0 passed, 1 failed"
  exit 1
fi

export ASAN_OPTIONS=abort_on_error=0:detect_leaks=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$top/tests/lsan.supp:print_suppressions=0

echo "== unit tests (meson test)"
# /diskcache/enospc fills a small file system: a 4 MB tmpfs where one can
# be mounted (root), else that test is skipped.  Unmounted however the
# run ends.
smallfs=$(mktemp -d /tmp/imapfuse-smallfs.XXXXXX)
smallfs_mounted=
drop_smallfs() {
  if [ -n "$smallfs_mounted" ]; then
    umount -l "$smallfs"
    smallfs_mounted=
  fi
  rmdir "$smallfs" 2>/dev/null
}
trap drop_smallfs EXIT
trap 'drop_smallfs; exit 129' HUP
trap 'drop_smallfs; exit 143' TERM
if mount -t tmpfs -o size=4m tmpfs "$smallfs" 2>/dev/null; then
  smallfs_mounted=1
fi
env ${smallfs_mounted:+IMAPFUSE_TEST_SMALLFS=$smallfs} \
  timeout --kill-after=30 600 meson test -C "$build" --print-errorlogs --no-rebuild
unit_rc=$?
drop_smallfs
read -r upass ufail < <(/usr/bin/python3 - "$build/meson-logs/testlog.json" <<'PY'
import json, re, sys
p = f = 0
for line in open(sys.argv[1]):
    t = json.loads(line)
    out = t.get("stdout") or ""
    ok = len(re.findall(r"^ok \d+", out, re.M))
    bad = len(re.findall(r"^not ok \d+", out, re.M))
    if t.get("result") not in ("OK", "EXPECTEDFAIL", "SKIP") and bad == 0:
        bad = 1  # crashed or failed without a TAP line: count it
    p += ok; f += bad
print(p, f)
PY
)

echo "== integration tests (pytest, real mounts against Dovecot)"
export IMAPFUSE_BUILD=$build
junit=$build/pytest.xml
# A hang must fail the run, not stall it: the whole suite takes minutes.
timeout --kill-after=30 1800 \
  /usr/bin/python3 -m pytest -q -rfE -p no:cacheprovider --junitxml="$junit" tests/integration
py_rc=$?
if [ "$py_rc" -eq 124 ] || [ "$py_rc" -eq 137 ]; then
  echo "integration tests timed out after 30 minutes"
  for m in $(awk '$1 ~ /^imapfuse/ {print $2}' /proc/mounts); do fusermount3 -uz "$m"; done
fi
read -r ipass ifail < <(/usr/bin/python3 - "$junit" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1); sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
sk = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - sk, f)
PY
)
if [ "$py_rc" -ne 0 ] && [ "$ifail" -eq 0 ]; then ifail=1; fi
if [ "$unit_rc" -ne 0 ] && [ "$ufail" -eq 0 ]; then ufail=1; fi

passed=$((upass + ipass))
failed=$((ufail + ifail))
echo "unit: $upass passed, $ufail failed; integration: $ipass passed, $ifail failed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]

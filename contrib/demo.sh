#!/usr/bin/env bash
# imapfuse demo, as root on Debian 12: installs what is missing, builds,
# starts a private Dovecot on 127.0.0.1 seeded with a few hundred sample
# messages, mounts it at ./demo-mail, shows ls, find and grep on it, and
# stays mounted until Ctrl-C (then unmounts and stops Dovecot).
#   --tls      connect with imaps:// and the test CA (cafile=)
#   --no-wait  show the commands and unmount at once (for scripts)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
tls=0 wait=1
for a in "$@"; do
  case "$a" in
    --tls) tls=1 ;;
    --no-wait) wait=0 ;;
    *) echo "usage: $0 [--tls] [--no-wait]" >&2; exit 2 ;;
  esac
done

bash contrib/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null

state=$(mktemp -d /tmp/imapfuse-demo.XXXXXX)
mnt=$top/demo-mail
server_pid=
cleanup() {
  trap - INT TERM HUP EXIT
  trap '' PIPE # output may be gone (demo.sh | head): clean up regardless
  if mountpoint -q "$mnt" 2>/dev/null; then
    fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
    echo "unmounted $mnt" 2>/dev/null || true
  fi
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    echo "stopped the demo Dovecot" 2>/dev/null || true
  fi
  rm -rf "$state"
}
trap cleanup INT TERM HUP PIPE EXIT

tls_flag=()
[ "$tls" = 1 ] && tls_flag=(--tls)
/usr/bin/python3 tests/integration/imapserver.py "${tls_flag[@]}" --state-dir "$state" \
  >"$state/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  [ -f "$state/env" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$state/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -f "$state/env" ] || { echo "demo Dovecot did not start" >&2; cat "$state/server.log" >&2; exit 1; }
# shellcheck disable=SC1091
HOST=$(. "$state/env"; echo "$HOST")
PORT=$(. "$state/env"; echo "$PORT")
TLS_PORT=$(. "$state/env"; echo "$TLS_PORT")
IMAP_USER=$(. "$state/env"; echo "$IMAP_USER")
PWFILE=$(. "$state/env"; echo "$PWFILE")
CAFILE=$(. "$state/env"; echo "$CAFILE")

mkdir -p "$mnt"
if [ "$tls" = 1 ]; then
  url="imaps://$IMAP_USER@$HOST:$TLS_PORT"
  opts="password_file=$PWFILE,cafile=$CAFILE,cache_dir=$state/cache"
else
  url="imap://$IMAP_USER@$HOST:$PORT"
  opts="password_file=$PWFILE,tls=off,cache_dir=$state/cache"
fi
echo "+ build/imapfuse -o $opts $url demo-mail"
build/imapfuse -o "$opts" "$url" "$mnt"

show() { echo; echo "+ $*"; "$@" || true; }
show ls demo-mail
echo; echo "+ ls -l demo-mail/INBOX | head -5"; ls -l demo-mail/INBOX | sed -n 1,5p  # sed reads it all: no SIGPIPE for ls
show find demo-mail -size +1M
show grep -rl --max-count=1 'needle-' demo-mail/Archive
show du -sh demo-mail
if [ "$wait" = 1 ]; then
  echo
  echo "Mounted at ./demo-mail (an independent copy of the sample account). Ctrl-C to unmount."
  while mountpoint -q "$mnt"; do sleep 1; done
fi

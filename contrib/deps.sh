#!/usr/bin/env bash
# Installs the Debian 12 packages imapfuse needs to build, test and demo,
# and any named as arguments (bench/run.sh: isync for its mbsync row).
# Only what is missing is installed; safe to run again.
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc libc6-dev libfuse3-dev fuse3 libglib2.0-dev libssl-dev
      openssl dovecot-imapd python3 python3-pytest attr rsync ripgrep scdoc "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Do not let the packaged Dovecot start a system service: tests run their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "deps.sh: /dev/fuse is missing: FUSE cannot mount here" >&2; exit 1; }

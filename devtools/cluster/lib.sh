#!/usr/bin/env bash
# devtools/cluster/lib.sh -- bash helpers shared by dev-slurm and dev-slurm-mn (sourced, not run).
# The caller sets NAME (its log prefix) and D (its state dir) before sourcing.

log() { echo "$NAME: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
running() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [ "${s%% *}" != Z ]; }  # zombies are dead
is_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

# write_if_changed FILE TEXT: returns 0 when the file changed
write_if_changed() {
  if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then return 1; fi
  printf '%s\n' "$2" >"$1"; return 0
}

apt_install() {   # apt_install PKG... : install what is missing (apt-get update only when needed)
  local missing=() p rc=0 made_policy=0
  for p; do is_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  log "installing ${missing[*]} (apt-get, log: $D/log/apt.log)"
  mkdir -p "$D/log"
  export DEBIAN_FRONTEND=noninteractive
  local opts=(-y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
  # keep packages from starting system services (system mariadb on :3306, slurmctld
  # without a config, ...): we start our own daemons.  Only if no policy exists.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, created by hpcft devtools/cluster/$NAME\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update -qq >>"$D/log/apt.log" 2>&1 || rc=$?
  fi
  if [ $rc = 0 ] && ! apt-get install "${opts[@]}" "${missing[@]}" >>"$D/log/apt.log" 2>&1; then
    # stale lists (404s) or a never-updated machine: update once and retry
    rc=0; apt-get update -qq >>"$D/log/apt.log" 2>&1 || rc=$?
    [ $rc = 0 ] && { apt-get install "${opts[@]}" "${missing[@]}" >>"$D/log/apt.log" 2>&1 || rc=$?; }
  fi
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || { tail -n 20 "$D/log/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

ensure_munge() {   # one munged for the whole machine, shared with dev-slurm-mn
  munge_ok && return 0
  mkdir -p /run/lock
  (
    flock -w 60 8 || exit 1
    munge_ok && exit 0
    if [ ! -s /etc/munge/munge.key ]; then
      log "creating /etc/munge/munge.key"
      mkdir -p /etc/munge
      mungekey --create --keyfile=/etc/munge/munge.key
      chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge: /run/munge; chmod 755 /run/munge
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force </dev/null >/dev/null 2>&1 8>&- 9>&- || true
    for _ in $(seq 100); do munge_ok && exit 0; sleep 0.1; done
    exit 1
  ) 8>/run/lock/hpcft-munge.lock || die "munged does not work (see /var/log/munge/munged.log)"
}

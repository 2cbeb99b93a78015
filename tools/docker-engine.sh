#!/usr/bin/env bash
# A Docker engine for the docker flow and its tests, as a set-up step.
#
#   usage: tools/docker-engine.sh start | stop | status | -h
#
#   start   install Debian's docker.io when `dockerd` is missing and apt-get is there (as root;
#           with mmdebstrap, which tools/xinference-image.sh makes the image's root file system
#           with), then start dockerd when no daemon answers on the default socket. Running it
#           again changes nothing: a daemon that answers (ours or anyone's) is left alone.
#   stop    stop the daemon this script started (its pid file), and only that one.
#   status  say whether a daemon answers, and whether it is ours.
#
# The pid and log of a daemon we start live in $XINFERENCE_OFFLINE_CACHE/dockerd (default
# ~/.cache/xinference-offline/dockerd). Exit status: 0 done, 1 no engine could be had, 2 usage.
set -euo pipefail

PROG=docker-engine
log() { echo "$PROG: $*" >&2; }
usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

state=${XINFERENCE_OFFLINE_CACHE:-$HOME/.cache/xinference-offline}/dockerd
pidfile="$state/dockerd.pid"
logfile="$state/dockerd.log"
socket=/var/run/docker.sock

answers() { docker -H "unix://$socket" version --format '{{.Server.Version}}' >/dev/null 2>&1; }
our_pid() {  # the pid of the daemon we started, when it still runs
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

install_engine() {
  local packages=()
  command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || packages+=(docker.io)
  command -v mmdebstrap >/dev/null 2>&1 || packages+=(mmdebstrap)
  [ ${#packages[@]} -gt 0 ] || return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no ${packages[*]} here and no apt-get to install them: install a Docker engine (and mmdebstrap) by hand"; return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    log "no ${packages[*]} here; installing needs root (run this as root, or: sudo apt-get install ${packages[*]})"; return 1
  fi
  log "installing ${packages[*]} with apt-get (about a minute)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >"$state/apt.log" 2>&1 \
    || { apt-get update -q >>"$state/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >>"$state/apt.log" 2>&1; } \
    || { log "apt-get install ${packages[*]} failed (log: $state/apt.log):"; tail -n 5 "$state/apt.log" >&2; return 1; }
}

start() {
  mkdir -p "$state"
  install_engine || return 1
  if answers; then
    if our_pid >/dev/null; then log "dockerd already running (ours, pid $(our_pid))"; else log "a Docker engine already answers on $socket (not ours; left alone)"; fi
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then log "no daemon answers on $socket and starting dockerd needs root"; return 1; fi
  log "starting dockerd (log: $logfile)"
  # setsid: the daemon outlives this shell and the session that ran it.
  setsid dockerd --storage-driver=overlay2 --pidfile "$pidfile" -H "unix://$socket" >>"$logfile" 2>&1 < /dev/null &
  local waited=0
  until answers; do
    if [ "$waited" -ge 60 ]; then
      log "dockerd did not answer within 60 s; the end of its log ($logfile):"; tail -n 20 "$logfile" >&2; return 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  log "dockerd $(docker version --format '{{.Server.Version}}') answers on $socket after ${waited}s (pid $(our_pid || echo '?'))"
}

stop() {
  local pid
  if ! pid=$(our_pid); then log "no dockerd started by this script is running; nothing stopped"; return 0; fi
  log "stopping dockerd (pid $pid)"
  kill "$pid"
  local waited=0
  while kill -0 "$pid" 2>/dev/null; do
    [ "$waited" -lt 30 ] || { log "dockerd (pid $pid) still runs after 30 s; sending KILL"; kill -9 "$pid"; break; }
    sleep 1; waited=$((waited + 1))
  done
  rm -f "$pidfile"
}

status() {
  if answers; then
    if our_pid >/dev/null; then echo "running (ours, pid $(our_pid))"; else echo "running (not started by this script)"; fi
  else
    echo "not running"; return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac

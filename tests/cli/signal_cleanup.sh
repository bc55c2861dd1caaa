#!/usr/bin/env bash
# SIGTERM in the middle of a `kvbm` run leaves nothing behind: no temp folder, no scratch
# file, no child process (the demo's peer, the bench's target, ucx_perftest's server).
#   signal_cleanup.sh KVBM WORKDIR demo|xfer
# Not timed: it waits (up to a minute) until the run is under way, and whenever the
# signal lands, nothing may be left.
set -euo pipefail
kvbm=$1 work=$2 what=$3
rm -rf "$work"
mkdir -p "$work/tmp"
export TMPDIR=$work/tmp  # where the demo makes its folder and the bench its files

fail() {
  echo "FAIL: $*"
  cat "$work/out.txt" 2>/dev/null || true
  exit 1
}
# /proc/<pid>/stat after the command name (which may hold spaces): "state ppid ...".
stat_fields() {
  local s
  read -r s <"/proc/$1/stat" 2>/dev/null || return 1
  echo "${s##*) }"
}
children_of() {  # the pids whose parent is $1
  local f pid fields
  for f in /proc/[0-9]*; do
    pid=${f#/proc/}
    read -r -a fields <<<"$(stat_fields "$pid" || true)"
    [ "${fields[1]:-}" = "$1" ] && echo "$pid"
  done
  return 0
}
gone() {  # no such process, or a zombie waiting for its reaper
  local fields
  read -r -a fields <<<"$(stat_fields "$1" || true)"
  [ -z "${fields[0]:-}" ] || [ "${fields[0]}" = Z ]
}

case $what in
  demo)
    args=(demo --mib 256)
    # Under way: its folder made, the peer started, and (if it gets there in time) a file
    # of the folder open.
    ready() {
      [ -n "$(ls -A "$work/tmp")" ] && [ -n "$(children_of "$pid")" ] &&
        { ls -l "/proc/$pid/fd" 2>/dev/null | grep -q "$work/tmp/" || [ "$1" -gt 100 ]; }
    }
    ;;
  xfer)
    # A stand-in for ucx_perftest that records its pid and never answers: the bench waits
    # on its client with the server running, as it does on a slow real one.
    printf '#!/bin/sh\necho $$ >> "%s/perftest.pids"\nexec sleep 600\n' "$work" >"$work/perftest"
    chmod +x "$work/perftest"
    # --file-mib: the target also makes a scratch file in the temp dir.
    args=(bench xfer --sizes 4K --descs 1 --iters 10 --rounds 1 --lat-sizes 8 --lat-iters 10
          --file-mib 8 --perftest "$work/perftest")
    ready() { [ -f "$work/perftest.pids" ] && [ "$(wc -l <"$work/perftest.pids")" -ge 2 ]; }
    ;;
  *) fail "unknown case $what" ;;
esac

"$kvbm" "${args[@]}" >"$work/out.txt" 2>&1 &
pid=$!
for i in $(seq 600); do
  kill -0 "$pid" 2>/dev/null || fail "kvbm exited before the signal"
  ready "$i" && break
  sleep 0.1
done
ready 1000 || fail "kvbm did not get under way within a minute"
victims=$(echo $(children_of "$pid") $(cat "$work/perftest.pids" 2>/dev/null || true))
echo "sending SIGTERM to kvbm $pid (children and helpers: $victims; files open in the temp dir:" \
  "$(ls -l "/proc/$pid/fd" 2>/dev/null | grep -c "$work/tmp/" || true))"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 143 ] || fail "kvbm exited with $rc, not by SIGTERM (143)"
for v in $victims; do
  for i in $(seq 100); do gone "$v" && break; sleep 0.1; done
  gone "$v" || fail "process $v ($(cat /proc/$v/cmdline 2>/dev/null | tr '\0' ' ')) outlived kvbm"
done
left=$(find "$work/tmp" -mindepth 1)
[ -z "$left" ] || fail "left behind: $left"
echo "OK: nothing left behind"

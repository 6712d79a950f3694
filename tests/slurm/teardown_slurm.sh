#!/usr/bin/env bash
# Stop the test cluster of setup_slurm.sh: slurmctld, slurmd and the munged it started, and
# remove the fake GPU devices and the configuration files it made. The configuration must go:
# with a slurm.conf whose controller is down, the Slurm executor plugin's `scontrol show config`
# (run whenever snakemake starts) waits 9 s for it, in every later snakemake call. Packages
# stay, so the next setup is quick. Does nothing to a Slurm whose configuration this script's
# setup did not write.
set -euo pipefail

MARKER="# Written by lwise tests/slurm/setup_slurm.sh: a one-node test cluster."
STATE=/var/lib/lwise-slurm-test

say() { echo "teardown_slurm: $*" >&2; }

if [ ! -f /etc/slurm/slurm.conf ] || ! grep -qxF "$MARKER" /etc/slurm/slurm.conf; then
    say "no test cluster configured here; nothing to do"
    exit 0
fi

pid_of() { if [ -s "$1" ]; then cat "$1"; fi; }

stop_pid() { # pid, name: ask the process to stop, wait until it is gone, then insist
    local pid="$1" name="$2"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    # Wait on the process, not its pid file: daemons delete the file before they finish
    # exiting, and a munged still shutting down would remove the socket of the next one.
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    say "$name (pid $pid) did not stop; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Read the pids first: the daemons remove their pid files while shutting down.
ctld_pid="$(pid_of /run/slurmctld.pid)"
slurmd_pid="$(pid_of /run/slurmd.pid)"
munged_pid="$(pid_of /run/munge/munged.pid)"
# Stops the controller and every slurmd it knows; the signals below cover a half-dead cluster.
scontrol shutdown >/dev/null 2>&1 || true
stop_pid "$ctld_pid" slurmctld
stop_pid "$slurmd_pid" slurmd
rm -f /run/slurmctld.pid /run/slurmd.pid
if [ -e "$STATE/started-munged" ]; then
    stop_pid "$munged_pid" munged
    rm -f /run/munge/munged.pid
fi

if [ -f "$STATE/created-devices" ]; then
    while read -r device; do
        # Only the character devices setup made, never a real driver's node.
        if [ -c "$device" ]; then rm -f "$device"; fi
    done <"$STATE/created-devices"
fi
rm -f "$STATE"/started-* "$STATE/created-devices"
for file in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ -f "$file" ] && grep -qxF "$MARKER" "$file"; then rm -f "$file"; fi
done
say "stopped"

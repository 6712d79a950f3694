#!/usr/bin/env bash
# Bring up a one-node Slurm "cluster" on this machine for the tests: munge, slurmctld and
# slurmd, with two fake GPUs as GRES (Slurm then sets CUDA_VISIBLE_DEVICES like on a real GPU
# node). Debian 12 packages, no systemd, no accounting database.
#
# Idempotent: what is already installed, written or running is kept. Run as root.
# Exit codes: 0 ready; 77 this machine cannot host the test cluster (not root, no apt, packages
# not installable, a Slurm configuration that is not ours, no mknod); anything else: a failure.
#
# Settings (environment): LWISE_SLURM_GPUS (fake GPUs, default 2),
# LWISE_SLURM_WAIT (seconds to wait for the node, default 90).
set -euo pipefail

GPUS="${LWISE_SLURM_GPUS:-2}"
WAIT="${LWISE_SLURM_WAIT:-90}"
MARKER="# Written by lwise tests/slurm/setup_slurm.sh: a one-node test cluster."
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
STATE=/var/lib/lwise-slurm-test   # what this script created, for teardown_slurm.sh
LOG_DIR=/var/log/slurm

say() { echo "setup_slurm: $*" >&2; }
cannot() { say "SKIP: $*"; exit 77; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || cannot "must run as root to install and start Slurm"

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || cannot "Slurm is not installed and apt-get is not available"
    say "installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting daemons with their default config.
    local own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local ok=1
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || ok=""
    if [ -n "$ok" ]; then
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || ok=""
    fi
    [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
    [ -n "$ok" ] || cannot "could not install ${missing[*]} with apt-get"
    # Packages that need daemons to configure themselves may not have created these users.
    id slurm >/dev/null 2>&1 || die "package installation did not create the user 'slurm'"
    id munge >/dev/null 2>&1 || die "package installation did not create the user 'munge'"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

pid_alive() { # pidfile
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_munge() {
    munge_works && return 0
    # A second munged would take over the socket and delete it when it exits, taking the
    # node down with "Munge encode failed": start one only if none is running.
    if pid_alive /run/munge/munged.pid; then
        die "munged is running (pid $(cat /run/munge/munged.pid)) but 'munge -n | unmunge' fails"
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/started-munged"
    for _ in $(seq 50); do
        munge_works && return 0
        sleep 0.1
    done
    die "munged started but 'munge -n | unmunge' still fails (see /var/log/munge/munged.log)"
}

make_fake_gpus() {
    local i
    for ((i = 0; i < GPUS; i++)); do
        [ -e "/dev/nvidia$i" ] && continue
        # 195 is the NVIDIA driver's major number; nothing opens these, Slurm only lists them.
        mknod -m 666 "/dev/nvidia$i" c 195 "$i" 2>/dev/null ||
            cannot "cannot create the fake GPU device /dev/nvidia$i (mknod not permitted)"
        echo "/dev/nvidia$i" >>"$STATE/created-devices"
    done
}

node_line() {
    # Real topology from `slurmd -C` (a node whose config exceeds it is drained), with memory
    # set a little below what it reports, leaving room for the OS.
    local hw cpus mem topo
    hw="$(slurmd -C | head -n1)"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    [ -n "$cpus" ] || cpus="$(nproc)"
    [ -n "$mem" ] || mem="$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)"
    topo="$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)"
    echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus $topo RealMemory=$((mem * 9 / 10)) Gres=gpu:$GPUS State=UNKNOWN"
}

write_if_changed() { # path, content; prints "changed" when the file was (re)written
    if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then
        printf '%s\n' "$2" >"$1"
        echo changed
    fi
}

write_config() {
    local file
    for file in "$CONF" "$GRES_CONF"; do
        if [ -s "$file" ] && ! grep -qxF "$MARKER" "$file"; then
            cannot "$file exists and was not written by this script; not touching a real Slurm setup"
        fi
    done
    install -d -m 0755 /etc/slurm
    install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld "$LOG_DIR"
    install -d -m 0755 /var/spool/slurmd
    local last=$((GPUS - 1)) conf gres changed=""
    conf="$MARKER
ClusterName=lwisetest
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# cgroup tracking is unreliable in containers; process groups are enough for one node.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
# cons_tres understands --gpus (what the Snakemake plugin sends for resources: gpu=N).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No accounting database: Snakemake must query squeue, and finished jobs must stay visible
# there long enough (MinJobAge seconds) for it to see how they ended.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=600
GresTypes=gpu
$(node_line)
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
    gres="$MARKER
AutoDetect=off
Name=gpu File=/dev/nvidia[0-$last]"
    changed+="$(write_if_changed "$CONF" "$conf")"
    changed+="$(write_if_changed "$GRES_CONF" "$gres")"
    [ -n "$changed" ] && touch "$STATE/config-changed"
    return 0
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurm() {
    if [ -e "$STATE/config-changed" ] && { ctld_up || pid_alive /run/slurmd.pid; }; then
        say "configuration changed: restarting Slurm"
        scontrol shutdown >/dev/null 2>&1 || true
        for _ in $(seq 100); do
            pid_alive /run/slurmctld.pid || pid_alive /run/slurmd.pid || break
            sleep 0.1
        done
    fi
    rm -f "$STATE/config-changed"
    if ! ctld_up; then
        pid_alive /run/slurmctld.pid && die "slurmctld runs but does not answer 'scontrol ping'"
        rm -f /run/slurmctld.pid
        /usr/sbin/slurmctld
        touch "$STATE/started-slurmctld"
        for _ in $(seq 100); do
            ctld_up && break
            sleep 0.1
        done
        ctld_up || die "slurmctld did not come up (see $LOG_DIR/slurmctld.log)"
    fi
    if ! pid_alive /run/slurmd.pid; then
        rm -f /run/slurmd.pid
        # -N: the node is called localhost whatever this machine's host name is.
        /usr/sbin/slurmd -N localhost
        touch "$STATE/started-slurmd"
    fi
}

wait_for_node() {
    local state="" deadline=$((SECONDS + WAIT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        state="$(sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -n1)"
        case "$state" in
        idle | mixed | allocated) break ;;
        drain* | down* | *drain*)
            # e.g. left DOWN by an earlier unclean stop; the config has been checked above.
            scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    case "$state" in
    idle | mixed | allocated) ;;
    *)
        sinfo -N -l >&2 || true
        tail -n 20 "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log" >&2 || true
        die "node localhost is '${state:-unknown}', not idle, after ${WAIT}s"
        ;;
    esac
    local gres
    gres="$(sinfo -h -N -n localhost -o '%G' | head -n1)"
    [ "$gres" = "gpu:$GPUS" ] || die "node advertises GRES '$gres', expected gpu:$GPUS"
    say "ready: node localhost is $state with $gres"
}

install_packages
install -d -m 0755 "$STATE"
start_munge
make_fake_gpus
write_config
start_slurm
wait_for_node

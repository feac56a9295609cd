#!/usr/bin/env bash
# scripts/slurm-local.sh start|stop|status
#
# A real, single-node SLURM cluster on this machine, for scaleflow's tests and for users who
# want to try `launcher=slurm` without a cluster. Debian/Ubuntu only (apt, Debian's slurm-wlm
# packages); start and stop need root.
#
#   start   install missing packages, write the config, start munged, a private MariaDB,
#           slurmdbd, slurmctld and slurmd, wait until the node is idle. Running it again is
#           harmless: daemons that already run are left alone.
#   stop    cancel remaining jobs, then end the daemons this script started (by their pid
#           files), nothing else.
#   status  print which daemons run and `sinfo`; exit 0 only if the cluster answers.
#
# A start when none of the cluster's daemons runs (after `stop`, a reboot, a crash, or on a
# machine restored from a disk image) begins a fresh cluster: the job state and accounting
# records left on disk are discarded. Their jobs cannot be running any more, and state saved
# by slurmctld and by MariaDB at different moments disagrees about job ids: slurmctld hands
# out ids the accounting database already holds, and `sacct` then reports another job's
# state (seen in CI: new jobs read as PENDING forever).
#
# No systemd: the daemons are started directly, so this works in containers and CI runners.
# Accounting (slurmdbd + MariaDB) is not optional: without it `sacct` fails and submitit reads
# every job state as UNKNOWN, so `result()` on a cancelled job would wait forever.
#
# Environment knobs (all optional):
#   SCALEFLOW_SLURM_TIMEOUT   seconds to wait for each daemon / the idle node (default 60)
#   SCALEFLOW_SLURM_CLUSTER   cluster name in slurm.conf and the accounting db (default scaleflow)
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Locations. Everything this script owns lives under STATE_DIR and LOG_DIR, except the two
# config files, which Slurm's client commands (sinfo, sbatch, sacct) only look for in
# /etc/slurm, and munge's key and socket, which clients look for in their standard places.
# ---------------------------------------------------------------------------------------------
STATE_DIR=/var/lib/scaleflow-slurm          # mysql datadir, slurmctld/slurmd state, our pid files
LOG_DIR=/var/log/scaleflow-slurm            # every daemon's log, and the apt log
PID_DIR=$STATE_DIR/pids                     # "we started this": one <daemon>.pid per daemon
RUN_DIR=/run/scaleflow-slurm                # the daemons' own pid files and the mysql socket
MYSQL_DIR=$STATE_DIR/mysql
MYSQL_RUN=$RUN_DIR/mysql                    # owned by the mysql user
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
MUNGE_KEY=/etc/munge/munge.key
MARKER="# Written by scaleflow scripts/slurm-local.sh"
CLUSTER=${SCALEFLOW_SLURM_CLUSTER:-scaleflow}
ACCOUNT=scaleflow
TIMEOUT=${SCALEFLOW_SLURM_TIMEOUT:-60}
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
HOST=$(hostname -s)

log() { printf '[slurm-local] %s\n' "$*"; }
die() { printf '[slurm-local] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "'$1' needs root (try: sudo bash $0 $1)"
}

# ---------------------------------------------------------------------------------------------
# Process helpers. Daemons we stop are reparented to PID 1, which in containers often does not
# reap them, so a dead daemon can linger as a zombie: a pid that exists is not enough, the
# process must exist, not be a zombie (state Z) or dead (X), and still be the program we
# expect (pids are reused, e.g. after a reboot with a stale pid file).
# ---------------------------------------------------------------------------------------------
pid_alive() { # pid_alive PID COMM
    local pid=$1 comm=$2 stat state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # /proc/PID/stat is "pid (comm) state ...": comm may contain spaces, so cut at the last ')'.
    state=${stat##*) }
    state=${state%% *}
    [[ $state != Z && $state != X ]] || return 1
    # comm is truncated to 15 characters by the kernel.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${comm:0:15}" ]]
}

# Our pid file for a daemon: prints the pid if the daemon we started is alive.
our_pid() { # our_pid NAME COMM
    local pid
    pid=$(cat "$PID_DIR/$1.pid" 2>/dev/null) || return 1
    pid_alive "$pid" "$2" && echo "$pid"
}

# Any live process with this comm (ours or not), e.g. a munged started by systemd.
any_pid() { # any_pid COMM
    local d
    for d in /proc/[0-9]*; do
        if pid_alive "${d#/proc/}" "$1"; then echo "${d#/proc/}"; return 0; fi
    done
    return 1
}

# Waits until a daemon's own pid file names a live process, then records it as ours.
record_pid() { # record_pid NAME COMM DAEMON_PIDFILE
    local name=$1 comm=$2 file=$3 pid i
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        pid=$(cat "$file" 2>/dev/null || true)
        if pid_alive "$pid" "$comm"; then
            echo "$pid" >"$PID_DIR/$name.pid"
            return 0
        fi
        sleep 0.1
    done
    die "$name did not start within ${TIMEOUT}s; see $(logfile_of "$name")"
}

logfile_of() {
    case $1 in
        munged) echo /var/log/munge/munged.log ;;
        *) echo "$LOG_DIR/$1.log" ;;
    esac
}

# Ends a daemon we started: SIGTERM, wait until it is gone (or a zombie), then SIGKILL.
stop_daemon() { # stop_daemon NAME COMM
    local name=$1 comm=$2 pid i
    if ! pid=$(our_pid "$name" "$comm"); then
        rm -f "$PID_DIR/$name.pid"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do # MariaDB flushes on shutdown: give it up to 30 s
        pid_alive "$pid" "$comm" || break
        sleep 0.1
    done
    if pid_alive "$pid" "$comm"; then
        log "$name did not exit after SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$PID_DIR/$name.pid"
}

# Polls a command until it succeeds or TIMEOUT passes.
wait_for() { # wait_for WHAT CMD...
    local what=$1 i
    shift
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------------------------
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0
remove_policy_rc() {
    # Only remove the policy file if this script created it.
    if [[ $POLICY_RC_OURS == 1 ]]; then rm -f "$POLICY_RC"; fi
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
            missing+=("$p")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0

    log "installing ${missing[*]} (log: $LOG_DIR/apt.log)"
    # Keep the packages' postinst scripts from starting services through invoke-rc.d: we start
    # our own daemons with our own config, and systemd may not even exist here. 101 means
    # "action forbidden". Never replace a policy file someone else put there.
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        POLICY_RC_OURS=1
        trap remove_policy_rc EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing (fresh container) or stale: refresh them first.
    apt-get update >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed; see $LOG_DIR/apt.log"
    apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 ||
        die "apt-get install failed; see $LOG_DIR/apt.log"
    remove_policy_rc
    POLICY_RC_OURS=0
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
CONFIG_CHANGED=0

# Installs a generated file if its content differs; refuses to overwrite a config that this
# script did not write (a real Slurm installation must not be clobbered).
install_config() { # install_config SRC DEST MODE OWNER
    local src=$1 dest=$2 mode=$3 owner=$4
    if [[ -e $dest ]] && ! grep -qF "$MARKER" "$dest"; then
        rm -f "$src"
        die "$dest exists and was not written by this script; move it away to use the local cluster"
    fi
    if [[ -e $dest ]] && cmp -s "$src" "$dest"; then
        rm -f "$src"
    else
        log "writing $dest"
        install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$src" "$dest"
        rm -f "$src"
        CONFIG_CHANGED=1
    fi
}

# A port nobody listens on, kept in the state dir so MariaDB keeps its port across restarts
# (slurmdbd.conf names it).
mysql_port() {
    local port
    if [[ -s $STATE_DIR/mysql.port ]]; then cat "$STATE_DIR/mysql.port"; return; fi
    for port in $(seq 33061 33099); do
        # bash's /dev/tcp connects: success means something already listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port" >"$STATE_DIR/mysql.port"
            echo "$port"
            return
        fi
    done
    die "no free port for MariaDB in 33061-33099"
}

write_config() {
    local node mem cpus_line real port pass tmp

    # Directories: slurmctld and slurmdbd drop to the slurm user, so their state and log
    # directories must belong to it; munged needs its runtime dir (systemd would make it).
    # MariaDB runs as mysql, hence its own runtime dir for socket and pid file.
    mkdir -p "$STATE_DIR" "$PID_DIR" "$LOG_DIR" "$RUN_DIR" "$MYSQL_RUN" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" /run/munge
    chown slurm:slurm "$LOG_DIR" "$RUN_DIR" "$STATE_DIR/slurmctld"
    chown mysql:mysql "$MYSQL_RUN"
    chown munge:munge /run/munge
    chmod 755 /run/munge

    # munge key: the packages normally create one; make one if it is missing.
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 400 "$MUNGE_KEY"

    # Node topology exactly as slurmd sees it (a mismatch drains the node), with RealMemory at
    # 90% so the OS keeps some memory and a small fluctuation does not drain the node.
    node=$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n1) || true
    [[ -n $node ]] || die "'slurmd -C' printed no NodeName line"
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    real=$((mem * 9 / 10))
    cpus_line=$(sed -e 's/^NodeName=[^ ]* //' -e 's/RealMemory=[0-9]*//' <<<"$node")

    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER; edits are overwritten by 'start'.
# Single-node cluster for local tests. A change here needs a slurmctld restart.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120 s, minimum
# 5); 10 s keeps requeue/resume tests short and is ample for launching steps on one node.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: works in containers and VMs without delegated cgroup controllers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# Allocate cores and memory, not whole nodes: DefMemPerCPU keeps one job from taking all memory.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# Start batch jobs at once (cuts submit-to-start from about 3 s to 1 s); test the pending
# queue every 2 s, so a requeued job starts soon after its BeginTime (the default 60 s
# scheduling cycle left requeued jobs waiting about 30 s more).
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# Short grace period between SIGTERM and SIGKILL, so cancelled test jobs end quickly.
KillWait=5
# A node that restarts with a valid config returns to service by itself.
ReturnToService=2
MailProg=/bin/true
# Accounting through slurmdbd: sacct (and so submitit's job states) needs it.
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
NodeName=$HOST NodeAddr=127.0.0.1 $cpus_line RealMemory=$real State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    install_config "$tmp" "$SLURM_CONF" 644 root:root

    # slurmdbd refuses a config readable by others (it holds the database password).
    port=$(mysql_port)
    if [[ ! -s $STATE_DIR/mysql.pass ]]; then
        (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE_DIR/mysql.pass")
    fi
    pass=$(cat "$STATE_DIR/mysql.pass")
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER; edits are overwritten by 'start'.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$port
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    install_config "$tmp" "$SLURMDBD_CONF" 600 slurm:slurm
}

# ---------------------------------------------------------------------------------------------
# Daemons, in dependency order: munged (authentication for everything), MariaDB (storage for
# slurmdbd), slurmdbd (accounting; slurmctld registers with it), slurmctld, slurmd.
# ---------------------------------------------------------------------------------------------
start_munged() {
    if our_pid munged munged >/dev/null; then return 0; fi
    # A munged we did not start (e.g. the system's) is fine to use, if it answers.
    if any_pid munged >/dev/null && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        log "using the munged that already runs (not started by this script)"
        return 0
    fi
    log "starting munged"
    local args=()
    # After a crash munged refuses to start while its old socket exists; --force overrides
    # that, and is safe here because we checked that no munged runs.
    if [[ -S /run/munge/munge.socket.2 ]]; then args+=(--force); fi
    runuser -u munge -- /usr/sbin/munged "${args[@]}"
    record_pid munged munged /run/munge/munged.pid
    wait_for munge sh -c 'munge -n </dev/null | unmunge' || die "munged does not answer; see /var/log/munge/munged.log"
}

mysql() { mariadb --no-defaults --protocol=socket --socket="$MYSQL_SOCK" -uroot "$@"; }

start_mariadb() {
    local port pass
    port=$(cat "$STATE_DIR/mysql.port")
    pass=$(cat "$STATE_DIR/mysql.pass")
    if ! our_pid mariadb mariadbd >/dev/null; then
        # A private datadir, not the system's /var/lib/mysql: we never touch a MariaDB that
        # someone else runs.
        if [[ ! -d $MYSQL_DIR/mysql ]]; then
            log "creating the MariaDB data directory $MYSQL_DIR"
            mkdir -p "$MYSQL_DIR"
            chown mysql:mysql "$MYSQL_DIR"
            mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
                --auth-root-authentication-method=socket --skip-test-db \
                >>"$LOG_DIR/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed; see $LOG_DIR/mariadb-install.log"
        fi
        log "starting MariaDB on 127.0.0.1:$port"
        touch "$LOG_DIR/mariadb.log"
        chown mysql:mysql "$LOG_DIR/mariadb.log"
        # mariadbd does not daemonize: setsid puts it in its own session so it survives this
        # shell (and a CI step's process-group cleanup); --no-defaults ignores /etc/mysql.
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
            --bind-address=127.0.0.1 --port="$port" --socket="$MYSQL_SOCK" \
            --pid-file="$MYSQL_RUN/mariadb.pid" --log-error="$LOG_DIR/mariadb.log" \
            --skip-name-resolve --innodb-buffer-pool-size=128M \
            </dev/null >/dev/null 2>&1 &
        record_pid mariadb mariadbd "$MYSQL_RUN/mariadb.pid"
        wait_for mariadb mysql -e 'SELECT 1' || die "MariaDB does not answer; see $LOG_DIR/mariadb.log"
    fi
    # The slurm database user, every time: cheap, and keeps the password in step with the
    # file slurmdbd.conf was written from.
    mysql <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurmdbd() {
    if ! our_pid slurmdbd slurmdbd >/dev/null; then
        any_pid slurmdbd >/dev/null && die "a slurmdbd not started by this script runs; stop it first"
        log "starting slurmdbd"
        slurmdbd
        record_pid slurmdbd slurmdbd "$RUN_DIR/slurmdbd.pid"
    fi
    wait_for slurmdbd timeout 5 sacctmgr -n list cluster ||
        die "slurmdbd does not answer within ${TIMEOUT}s; see $LOG_DIR/slurmdbd.log"
}

# The cluster must exist in the accounting database before slurmctld registers with it;
# the account and users make `sacct` show jobs under a real association.
setup_accounting() {
    local user users=(root)
    if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]]; then
        log "adding cluster $CLUSTER to the accounting database"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P list account "$ACCOUNT" format=account) ]]; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="scaleflow local tests" organization=scaleflow >/dev/null
    fi
    # The user who ran sudo submits jobs too.
    if [[ -n ${SUDO_USER:-} && ${SUDO_USER} != root ]]; then users+=("$SUDO_USER"); fi
    for user in "${users[@]}"; do
        if [[ -z $(sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user="$user" format=user) ]]; then
            sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER" defaultaccount="$ACCOUNT" >/dev/null
        fi
    done
}

start_slurmctld() {
    if our_pid slurmctld slurmctld >/dev/null; then return 0; fi
    any_pid slurmctld >/dev/null && die "a slurmctld not started by this script runs; stop it first"
    log "starting slurmctld"
    slurmctld
    record_pid slurmctld slurmctld "$RUN_DIR/slurmctld.pid"
    wait_for slurmctld timeout 5 scontrol ping || die "slurmctld does not answer; see $LOG_DIR/slurmctld.log"
}

start_slurmd() {
    if our_pid slurmd slurmd >/dev/null; then return 0; fi
    any_pid slurmd >/dev/null && die "a slurmd not started by this script runs; stop it first"
    log "starting slurmd"
    slurmd
    record_pid slurmd slurmd "$RUN_DIR/slurmd.pid"
}

node_state() { timeout 5 sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1; }

# Ready means the node takes jobs: idle, or busy with jobs someone already submitted (a second
# `start` while tests run must not wait for them).
wait_node_ready() {
    local state="" i resumed=0
    for ((i = 0; i < TIMEOUT * 5; i++)); do
        state=$(node_state || true)
        case $state in
            idle | mixed | allocated | completing) log "node $HOST is $state"; return 0 ;;
            # A node left drained or down by an earlier run (e.g. a job that could not be
            # killed) does not come back by itself: resume it once, after giving slurmd a
            # few seconds to register.
            down* | drain* | fail*)
                if ((resumed == 0 && i > 15)); then
                    log "node $HOST is $state; resuming it"
                    scontrol update nodename="$HOST" state=resume || true
                    resumed=1
                fi
                ;;
        esac
        sleep 0.2
    done
    die "node $HOST not idle after ${TIMEOUT}s (state: '${state:-no answer}'); see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
}

# True when none of the daemons that keep job state (MariaDB, slurmdbd, slurmctld, slurmd)
# runs, whoever started them.
cluster_cold() {
    local comm
    for comm in mariadbd slurmdbd slurmctld slurmd; do
        if any_pid "$comm" >/dev/null; then return 1; fi
    done
    return 0
}

# Discards the job state and accounting database of an earlier start (see the header).
discard_old_state() {
    local dir found=0
    for dir in "$MYSQL_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"; do
        if [[ -d $dir && -n $(ls -A "$dir" 2>/dev/null) ]]; then found=1; fi
    done
    [[ $found == 1 ]] || return 0
    log "no cluster daemon runs: starting a fresh cluster (discarding old job state and accounting)"
    rm -rf "$MYSQL_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
}

cmd_start() {
    need_root start
    mkdir -p "$LOG_DIR"
    install_packages
    if cluster_cold; then discard_old_state; fi
    write_config
    # A changed slurm.conf only takes effect after a restart of the daemons that read it.
    if [[ $CONFIG_CHANGED == 1 ]]; then
        stop_daemon slurmd slurmd
        stop_daemon slurmctld slurmctld
        stop_daemon slurmdbd slurmdbd
    fi
    start_munged
    start_mariadb
    start_slurmdbd
    setup_accounting
    start_slurmctld
    start_slurmd
    wait_node_ready
    log "cluster '$CLUSTER' is up (logs: $LOG_DIR; stop with: bash $0 stop)"
}

cmd_stop() {
    need_root stop
    local jobs
    # Cancel what is left, so that no job is half-run when the cluster comes back; give the
    # jobs KillWait (5 s) plus a little to end.
    if our_pid slurmctld slurmctld >/dev/null; then
        jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086  # one argument per job id
            timeout 10 scancel $jobs || true
            wait_for "jobs to end" sh -c '[ -z "$(squeue -h -o %A)" ]' || log "some jobs still listed; stopping anyway"
        fi
    fi
    # Reverse start order; only what our pid files name.
    stop_daemon slurmd slurmd
    stop_daemon slurmctld slurmctld
    stop_daemon slurmdbd slurmdbd
    stop_daemon mariadb mariadbd
    stop_daemon munged munged
    log "stopped"
}

cmd_status() {
    local name comm pid rc=0
    for name in munged:munged mariadb:mariadbd slurmdbd:slurmdbd slurmctld:slurmctld slurmd:slurmd; do
        comm=${name#*:}
        name=${name%%:*}
        if pid=$(our_pid "$name" "$comm"); then
            printf '%-10s running (pid %s, started by this script)\n' "$name" "$pid"
        elif pid=$(any_pid "$comm"); then
            printf '%-10s running (pid %s, not started by this script)\n' "$name" "$pid"
        else
            printf '%-10s not running\n' "$name"
        fi
    done
    if ! command -v sinfo >/dev/null; then
        echo "sinfo: not installed (run: sudo bash $0 start)"
        return 1
    fi
    timeout 5 sinfo || rc=$?
    if [[ $rc -ne 0 ]]; then echo "the cluster does not answer (sinfo exit $rc)"; fi
    return "$rc"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A real one-node SLURM cluster with accounting, for the tests, as root on Debian 12.
#
# Usage: tests/runtimes/slurm.sh start DIR
#        tests/runtimes/slurm.sh stop DIR
#
# start installs Debian's Slurm 22.05, munge and MariaDB when missing, then runs munged,
# mariadbd, slurmdbd, slurmctld and slurmd, each with every config, state, spool, pid,
# socket and log file under DIR, and returns once the node is idle. It writes
#   DIR/env   "export NAME=value" lines (no quoting: DIR may hold no whitespace; only the
#             last one, PATH="DIR/bin:$PATH", refers to another variable). A test passes
#             SLURM_CONF and that PATH to every sbatch/squeue/sacct/snakemake call: the
#             wrappers in DIR/bin keep SLURM_CONF for commands run inside jobs
#   DIR/pids  "daemon pid" lines, which stop reads.
# The node offers two fake GPUs as gres (gpu:2, device files DIR/dev/nvidia0 and 1), so
# a job asking for --gpus=1 runs with CUDA_VISIBLE_DEVICES naming the GPU it was given.
# start on a cluster that is already running returns at once; stop cancels the jobs,
# stops the daemons by pid (TERM, then KILL) and keeps DIR's logs.
#
# Environment (all optional):
#   SLURMRT_PORT_BASE  slurmctld port; slurmd, slurmdbd and mariadbd take the next three
#                      (default 16817, away from Slurm's 6817 so a real cluster is safe)
#   SLURMRT_CLUSTER    cluster name (default hierpipe)
#   SLURMRT_CPUS       CPUs the node offers (default nproc; more than nproc is allowed)
#   SLURMRT_TIMEOUT    seconds to wait for each daemon (default 90)
set -euo pipefail

PROG=slurm.sh
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
PACKAGES=(munge mariadb-server mariadb-client slurmdbd slurmctld slurmd slurm-client)
CLIENTS=(sacct sacctmgr salloc sattach sbatch sbcast scancel scontrol sdiag sinfo sprio squeue
  sreport srun sshare sstat strigger)
TOOLS=(munged munge unmunge mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd
  sinfo squeue scontrol sbatch sacct sacctmgr scancel)
TIMEOUT="${SLURMRT_TIMEOUT:-90}"
PORT_BASE="${SLURMRT_PORT_BASE:-16817}"
CLUSTER="${SLURMRT_CLUSTER:-hierpipe}"
DB_PASS=slurmdbd

die() { echo "$PROG: $1" >&2; exit "${2:-1}"; }

usage() { die "usage: $PROG start DIR | stop DIR" 2; }

# Log tails go to stderr so a failing fixture shows why without opening files.
show_logs() {
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 25 "$f" >&2
  done
}

# A pid only counts when it still runs the program we started: after a reboot or a long
# pause the number may belong to someone else, and zombies (nobody may reap in this
# sandbox) are already dead.
alive() {
  local pid=$1 name=$2 comm state
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "${name:0:15}" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ] && [ "$state" != X ]
}

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$DIR/pids" 2>/dev/null | tail -n 1; }

# Waits up to $1 seconds for every pid to be gone (or a zombie).
wait_gone() {
  local deadline=$((SECONDS + $1)) pid left
  shift
  while :; do
    left=0
    for pid in "$@"; do
      if [ -d "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null; then
        left=1
      fi
    done
    [ "$left" = 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

terminate() {
  local grace=$1
  shift
  [ "$#" -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  if ! wait_gone "$grace" "$@"; then
    echo "$PROG: still running after ${grace}s, sending KILL to $*" >&2
    kill -KILL "$@" 2>/dev/null || true
    wait_gone 10 "$@" || echo "$PROG: could not kill $*" >&2
  fi
}

# slurmd starts each job step as a slurmstepd that outlives slurmd, and the job's
# processes hang below it. slurmstepd inherits slurmd's environment, which carries this
# cluster's marker; the job's tasks do not, so they are found as its descendants. The
# caller and its ancestors are spared, in case stop runs from inside a job.
leftovers() {
  local marker="SLURMRT_DAEMON_OF=$DIR" p pid spared roots=()
  spared=" $$ "
  pid=$$
  while [ "$pid" -gt 1 ]; do
    pid=$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 1)
    spared+="$pid "
  done
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    case "$spared" in *" $pid "*) continue ;; esac
    # Kernel threads and processes that just ended have no readable environ.
    if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$marker"; then roots+=("$pid"); fi
  done
  [ "${#roots[@]}" -gt 0 ] || return 0
  # Breadth-first walk of the parent links, from one ps snapshot.
  ps -e -o pid=,ppid= | awk -v roots="${roots[*]}" -v spared="$spared" '
    { parent[$1] = $2 }
    END {
      n = split(roots, q, " "); for (i = 1; i <= n; i++) keep[q[i]] = 1
      changed = 1
      while (changed) {
        changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
      }
      for (p in keep) if (index(spared, " " p " ") == 0) print p
    }'
}

stop_cluster() {
  local pid name pids=() rest i
  [ -f "$DIR/pids" ] || { echo "$PROG: nothing recorded in $DIR/pids, nothing to stop" >&2; return 0; }
  # Cancelling first lets slurmd end the job steps cleanly while it still can.
  pid=$(pid_of slurmctld)
  if alive "$pid" slurmctld && [ -r "$DIR/etc/slurm.conf" ]; then
    export SLURM_CONF="$DIR/etc/slurm.conf"
    local jobs deadline=$((SECONDS + 30))
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086 # one word per job id
      timeout 10 scancel $jobs 2>/dev/null || true
      while [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null || true)" ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.5
      done
    fi
  fi
  # Reverse start order: slurmd and slurmctld flush job records to slurmdbd, slurmdbd to
  # MariaDB, and all of them need munged to the end.
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    pid=$(pid_of "$name")
    if alive "$pid" "$name"; then terminate 30 "$pid"; fi
  done
  mapfile -t rest < <(leftovers)
  if [ "${#rest[@]}" -gt 0 ]; then
    echo "$PROG: stopping leftover processes ${rest[*]}" >&2
    terminate 5 "${rest[@]}"
  fi
  for name in "${DAEMONS[@]}"; do
    pid=$(pid_of "$name")
    if alive "$pid" "$name"; then pids+=("$name:$pid"); fi
  done
  [ "${#pids[@]}" -eq 0 ] || die "could not stop ${pids[*]}"
  rm -f "$DIR/pids"
}

install_packages() {
  local tool missing=()
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "$PROG: installing ${PACKAGES[*]} (missing: ${missing[*]})" >&2
  command -v apt-get >/dev/null || die "needs apt-get (Debian 12) to install ${PACKAGES[*]}"
  # Package scripts would start system-wide munge, MariaDB and Slurm services on the
  # default ports; a policy-rc.d that says no keeps the host free of them.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null \
      && DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
        --no-install-recommends install "${PACKAGES[@]}" >"$DIR/log/apt.log" 2>&1
  } || rc=$?
  [ "$own_policy" = 0 ] || rm -f "$policy"
  [ "$rc" = 0 ] || { show_logs "$DIR/log/apt.log"; die "apt-get install ${PACKAGES[*]} failed"; }
}

# Runs a daemon in the foreground of its own session, so the test runner's Ctrl-C and
# process group do not reach it and $! is the daemon itself. A clean environment keeps
# the caller's SLURM_*/CUDA_* variables out of the daemons and, through slurmd, the jobs.
launch() {
  local name=$1
  shift
  setsid env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME="$DIR" SLURM_CONF="$DIR/etc/slurm.conf" SLURMRT_DAEMON_OF="$DIR" \
    "$@" </dev/null >"$DIR/log/$name.out" 2>&1 9>&- &
  echo "$name $!" >>"$DIR/pids"
}

# wait_ready NAME LOG CHECK...: runs CHECK until it succeeds, the daemon dies, or the
# timeout passes; the error names the daemon and shows its logs.
wait_ready() {
  local name=$1 log=$2 pid deadline=$((SECONDS + TIMEOUT))
  shift 2
  pid=$(pid_of "$name")
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    if ! alive "$pid" "$name"; then
      show_logs "$DIR/log/$name.out" "$log"
      die "$name (pid $pid) exited during start-up; logs in $DIR/log"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_logs "$DIR/log/$name.out" "$log"
      die "$name (pid $pid) not ready after ${TIMEOUT}s (check: $*); logs in $DIR/log"
    fi
    sleep 0.5
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

munge_ok() { munge -n -S "$DIR/run/munge/munge.socket.2" | unmunge -S "$DIR/run/munge/munge.socket.2"; }

db_ok() {
  MYSQL_PWD=$DB_PASS mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$PORT_DB" -u slurm \
    -e 'SELECT 1' slurm_acct_db
}

ctld_ok() { timeout 10 scontrol ping | grep -q 'is UP'; }

node_idle() { [ "$(timeout 10 sinfo -h -N -n "$NODE" -o %T)" = idle ]; }

write_configs() {
  local mem_kb real_mem cpus ncpu overrides=""
  mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  # Leave some memory to the daemons and the test itself; above this, sbatch answers
  # "Memory specification can not be satisfied" like a real cluster does.
  real_mem=$((mem_kb * 85 / 100 / 1024))
  ncpu=$(nproc)
  cpus="${SLURMRT_CPUS:-$ncpu}"
  # More CPUs than the hardware has would drain the node unless the config wins.
  [ "$cpus" -le "$ncpu" ] || overrides="SlurmdParameters=config_overrides"

  # slurmd drops a gres File that is not a device node ("is not a valid character or
  # block device") and then sets no CUDA_VISIBLE_DEVICES. Nodes with NVIDIA's major
  # number satisfy its stat(); nothing ever opens them, and no driver stands behind them.
  local i
  GPU_BINDING=devices
  for i in 0 1; do
    if [ ! -c "$DIR/dev/nvidia$i" ]; then
      rm -f "$DIR/dev/nvidia$i"
      if ! mknod -m 666 "$DIR/dev/nvidia$i" c 195 "$i" 2>/dev/null; then
        # Without mknod the GPUs can still be allocated and counted, but jobs get no index.
        : >"$DIR/dev/nvidia$i"
        GPU_BINDING=count-only
      fi
    fi
  done
  [ "$GPU_BINDING" = devices ] \
    || echo "$PROG: mknod failed; GPUs are counted but jobs get no CUDA_VISIBLE_DEVICES" >&2

  cat >"$DIR/etc/slurm.conf" <<EOF
# Written by tests/runtimes/slurm.sh; rewritten at every start.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT_CTLD
SlurmdPort=$PORT_SLURMD
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in this sandbox (no systemd, cgroup v2 not delegated).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# The main scheduler stops a partition at the first job that must wait (say, for a GPU);
# frequent backfill lets the CPU-only jobs behind it start within seconds.
SchedulerParameters=bf_interval=2
MpiDefault=none
# A node that was down (killed slurmd, restart over an old DIR) comes back by itself.
ReturnToService=2
# The snakemake SLURM plugin reads sacct; squeue must keep finished jobs long enough
# for its squeue fallback, too.
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$PORT_DBD
# Connections to slurmdbd take their munge socket from here, not from AuthInfo.
AccountingStoragePass=$DIR/run/munge/munge.socket.2
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MailProg=/bin/true
GresTypes=gpu
$overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$((real_mem / cpus))
EOF

  # snakemake's jobstep plugin strips every SLURM_* variable but the job's identity
  # before its srun inside the job, SLURM_CONF included, and srun then looks for
  # /etc/slurm/slurm.conf. Wrappers on PATH (kept by --export=ALL) restore the default.
  local tool
  for tool in "${CLIENTS[@]}"; do
    [ -x "/usr/bin/$tool" ] || continue
    cat >"$DIR/bin/$tool" <<EOF
#!/bin/sh
# Written by tests/runtimes/slurm.sh.
export SLURM_CONF="\${SLURM_CONF:-$DIR/etc/slurm.conf}"
exec /usr/bin/$tool "\$@"
EOF
    chmod 755 "$DIR/bin/$tool"
  done

  cat >"$DIR/etc/gres.conf" <<EOF
# Written by tests/runtimes/slurm.sh. No NVML here: the two GPUs are declared, not found.
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/dev/nvidia[0-1]
EOF

  # slurmdbd refuses a config that others can read, since it holds the database password.
  (
    umask 077
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
# Written by tests/runtimes/slurm.sh.
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$PORT_DBD
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$PORT_DB
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  )
  chown root:root "$DIR/etc/slurmdbd.conf"
  chmod 600 "$DIR/etc/slurmdbd.conf"

  cat >"$DIR/mysql/init.sql" <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_cluster() {
  local name pid running=() dead=() t0=$SECONDS
  if [ -f "$DIR/pids" ]; then
    for name in "${DAEMONS[@]}"; do
      pid=$(pid_of "$name")
      if alive "$pid" "$name"; then running+=("$name:$pid"); else dead+=("$name"); fi
    done
    if [ "${#dead[@]}" -eq 0 ]; then
      echo "$PROG: already running in $DIR (${running[*]}); nothing to do" >&2
      return 0
    fi
    [ "${#running[@]}" -eq 0 ] \
      || die "partly running in $DIR (up: ${running[*]}; down: ${dead[*]}); run '$PROG stop $DIR' first"
    rm -f "$DIR/pids"
  fi

  install_packages
  PORT_CTLD=$PORT_BASE
  PORT_SLURMD=$((PORT_BASE + 1))
  PORT_DBD=$((PORT_BASE + 2))
  PORT_DB=$((PORT_BASE + 3))
  local port
  for port in "$PORT_CTLD" "$PORT_SLURMD" "$PORT_DBD" "$PORT_DB"; do
    port_free "$port" || die "port $port on 127.0.0.1 is taken (another cluster?); set SLURMRT_PORT_BASE"
  done
  mkdir -p "$DIR"/{bin,etc,dev,state/slurmctld,spool,mysql/tmp,run/munge,munge}
  # munged wants a socket directory everyone may enter and a key only it can read.
  chmod 755 "$DIR/run/munge"
  chmod 700 "$DIR/munge"
  write_configs

  # From here on, a failed start takes down what it started, so a broken fixture does not
  # leave daemons holding the ports for the next test.
  trap 'rc=$?; if [ "$rc" != 0 ]; then stop_cluster 2>/dev/null || true; fi' EXIT

  # A key of our own keeps this cluster apart from any system munge.
  if [ ! -s "$DIR/munge/munge.key" ]; then
    (umask 077; dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none)
  fi
  # --force: munged wants every directory above its socket open to all (pytest's
  # /tmp/pytest-of-root is 0700); here every client runs as root and gets in anyway.
  launch munged munged --foreground --force --key-file="$DIR/munge/munge.key" \
    --socket="$DIR/run/munge/munge.socket.2" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" --num-threads=4
  wait_ready munged "$DIR/log/munged.log" munge_ok

  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" \
      --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
      >"$DIR/log/mariadb-install-db.log" 2>&1 \
      || { show_logs "$DIR/log/mariadb-install-db.log"; die "mariadb-install-db failed"; }
  fi
  # --no-defaults: /etc/mysql/my.cnf would point at the system data dir and socket.
  # Native AIO is off because this sandbox's kernel interface may not offer it.
  launch mariadbd mariadbd --no-defaults --user=root --datadir="$DIR/mysql/data" \
    --tmpdir="$DIR/mysql/tmp" --socket="$DIR/run/mysqld.sock" --port="$PORT_DB" \
    --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadb.log" --skip-name-resolve --skip-log-bin \
    --init-file="$DIR/mysql/init.sql" --innodb-use-native-aio=0 \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
  wait_ready mariadbd "$DIR/log/mariadb.log" db_ok

  export SLURM_CONF="$DIR/etc/slurm.conf"
  launch slurmdbd slurmdbd -D
  wait_ready slurmdbd "$DIR/log/slurmdbd.log" timeout 10 sacctmgr -n list cluster
  # slurmctld only sends accounting records to a cluster slurmdbd knows.
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
  fi

  launch slurmctld slurmctld -D
  wait_ready slurmctld "$DIR/log/slurmctld.log" ctld_ok

  launch slurmd slurmd -D
  if ! (wait_ready slurmd "$DIR/log/slurmd.log" node_idle); then
    sinfo -N -l >&2 || true
    sinfo -R >&2 || true
    show_logs "$DIR/log/slurmctld.log"
    die "node $NODE did not become idle"
  fi

  cat >"$DIR/env" <<EOF
export SLURM_CONF=$DIR/etc/slurm.conf
export SLURMRT_DIR=$DIR
export SLURMRT_CLUSTER=$CLUSTER
export SLURMRT_PARTITION=main
export SLURMRT_ACCOUNT=root
export SLURMRT_NODE=$NODE
export SLURMRT_GPUS=2
export SLURMRT_GPU_BINDING=$GPU_BINDING
export SLURMRT_BIN=$DIR/bin
export PATH="$DIR/bin:\$PATH"
EOF
  trap - EXIT
  echo "$PROG: cluster $CLUSTER up in $((SECONDS - t0)) s; source $DIR/env (SLURM_CONF=$DIR/etc/slurm.conf)" >&2
}

[ "$#" -eq 2 ] || usage
CMD=$1
[ "$(id -u)" = 0 ] || die "must run as root (daemons run as root, packages may be installed)" 2
case "$2" in *[[:space:]]*) die "DIR must not contain whitespace (slurm.conf cannot quote it)" 2 ;; esac
mkdir -p "$2/log"
DIR=$(cd "$2" && pwd -P)
NODE=$(hostname -s)
# A unix socket path holds at most 107 bytes. The longest here is a job step's socket,
# DIR/spool/NODE_JOBID.STEPID, with a batch step id of 10 digits; job ids up to 7 digits.
max_len=$((107 - 7 - ${#NODE} - 1 - 7 - 11))
[ "${#DIR}" -le "$max_len" ] \
  || die "DIR $DIR is longer than $max_len characters; unix sockets under it would be cut off" 2

# One start or stop at a time per DIR; fd 9 is closed in every daemon so it does not keep
# the lock.
exec 9>"$DIR/.lock"
flock -w 120 9 || die "another $PROG start/stop holds $DIR/.lock"

case "$CMD" in
  start) start_cluster ;;
  stop) stop_cluster ;;
  *) usage ;;
esac

#!/usr/bin/env bash
# A real one-node SLURM cluster on 127.0.0.1 for tests and single machines (Debian/Ubuntu, root, no systemd):
# slurm-wlm + munge, installed with apt if missing; daemons started by hand; idempotent (a running
# cluster with the same slurm.conf is reused; a changed slurm.conf restarts the daemons).
# Usage: launch/cluster/start_local_slurm.sh [--cpus N] [--with-dbd]
#   --cpus N    CPUs the node offers (default max(nproc, 4)): more than the machine has lets small
#               test trials run side by side (SlurmdParameters=config_overrides accepts the claim)
#   --with-dbd  MariaDB + slurmdbd so that plain `sacct` works (submitit reports real job states)
# Adapted from ../shared/slurm/start_local_slurm.sh.
set -euo pipefail
alive() { local p; p=$(cat "$1" 2>/dev/null) || return 1; [[ -n "$p" && -r /proc/$p/status ]] && ! grep -q "^State:\s*Z" /proc/$p/status; }
WITH_DBD=0; NCPU=$(( $(nproc) > 4 ? $(nproc) : 4 ))
while (( $# )); do case "$1" in
  --with-dbd) WITH_DBD=1; shift ;;
  --cpus) NCPU="$2"; shift 2 ;;
  *) echo "unknown argument $1 (use --cpus N, --with-dbd)" >&2; exit 2 ;;
esac; done
[[ $(id -u) == 0 ]] || { echo "start_local_slurm.sh must run as root (it writes /etc/slurm and starts daemons)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
PKGS="slurm-wlm slurmctld slurmd slurm-client munge"
(( WITH_DBD )) && PKGS="$PKGS slurmdbd mariadb-server"
dpkg -s $PKGS >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq --no-install-recommends $PKGS >/dev/null; }

HOST=$(hostname -s); MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))
grep -qE "^127\.[0-9.]+\s.*\b$HOST\b" /etc/hosts || echo "127.0.0.1 $HOST" >> /etc/hosts
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
if (( WITH_DBD )); then ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"; else ACCT="AccountingStorageType=accounting_storage/none"; fi
CONF=$(cat <<EOC
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
MinJobAge=60
JobAcctGatherType=jobacct_gather/linux
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOC
)
CHANGED=0
[[ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" == "$CONF" ]] || { echo "$CONF" > /etc/slurm/slurm.conf; CHANGED=1; }
stop() { local p; p=$(cat "$1" 2>/dev/null) || return 0; [[ -n "$p" ]] || return 0; kill "$p" 2>/dev/null || return 0
  for i in $(seq 100); do [[ -r /proc/$p/status ]] && ! grep -q "^State:\s*Z" /proc/$p/status || break; sleep 0.1; done; }
(( CHANGED )) && { stop /run/slurmd.pid; stop /run/slurmctld.pid; }

# munge (the key is created by the Debian postinst; create one if missing)
[[ -s /etc/munge/munge.key ]] || { mungekey -c -f -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
for i in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n >/dev/null || { echo "munged not working" >&2; exit 1; }

if (( WITH_DBD )); then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  alive /run/mysqld/mysqld.pid || { nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/slurm/mariadb.log 2>&1 & }
  for i in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; CREATE DATABASE IF NOT EXISTS slurm_acct_db; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<EOC
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOC
  chmod 600 /etc/slurm/slurmdbd.conf
  alive /run/slurmdbd.pid || /usr/sbin/slurmdbd
  for i in $(seq 50); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -i -Q add cluster local >/dev/null 2>&1 || true
fi

alive /run/slurmctld.pid || /usr/sbin/slurmctld
alive /run/slurmd.pid || /usr/sbin/slurmd
for i in $(seq 150); do sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mixed|allocated)" && break; sleep 0.2; done
sinfo -h -o %T | grep -qE "^(idle|mixed|allocated)" || { echo "the node did not come up; see /var/log/slurm/slurmd.log and slurmctld.log" >&2; sinfo >&2; exit 1; }
sinfo

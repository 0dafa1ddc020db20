#!/usr/bin/env bash
# Stops or starts one of the machine's real services for `make chaos` (never for
# `make test`: other tests share these services).
#   scripts/chaos-service.sh stop  postgres|rabbitmq|redis
#   scripts/chaos-service.sh start postgres|rabbitmq|redis   (scripts/ensure-services.sh)
# Stopping waits until the port is closed; starting waits until it answers.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "chaos-service: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_closed() { # port seconds
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    port_open "$1" || return 0
    sleep 0.2
  done
  return 1
}

stop_postgres() {
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main stop -m fast 2>/dev/null \
      || as_root pg_ctlcluster "$version" main stop -m fast
  else
    as_root service postgresql stop
  fi
  wait_closed 5432 60 || die "PostgreSQL still answers on 5432"
}

stop_rabbitmq() {
  as_root rabbitmqctl stop >/dev/null 2>&1 || as_root service rabbitmq-server stop
  wait_closed 5672 60 || die "RabbitMQ still answers on 5672"
}

stop_redis() {
  redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true
  wait_closed 6379 30 || die "Redis still answers on 6379"
}

[ $# -eq 2 ] || die "usage: $0 stop|start postgres|rabbitmq|redis"
case "$2" in postgres | rabbitmq | redis) ;; *) die "unknown service '$2'" ;; esac
case "$1" in
  stop) "stop_$2" ;;
  start) scripts/ensure-services.sh "$2" ;;
  *) die "unknown action '$1'" ;;
esac

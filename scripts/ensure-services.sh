#!/usr/bin/env bash
# Makes PostgreSQL, RabbitMQ (with its management API) and Redis available on
# their standard loopback ports:
#   1. use the one already answering;
#   2. otherwise start it if it is installed but stopped;
#   3. otherwise install the Debian/Ubuntu package and start it.
# Idempotent and quiet when all is well; says clearly what it could not do.
# Usage: scripts/ensure-services.sh [postgres] [rabbitmq] [redis]   (default: all)
set -euo pipefail

log() { echo "ensure-services: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="__none__"; fi
fi
as_root() {
  [ "$SUDO" = "__none__" ] && die "need root (or sudo) to run: $*"
  $SUDO "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    port_open "$1" && return 0
    sleep 0.2
  done
  return 1
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "$1 is not installed and this is not a Debian/Ubuntu system: install $* yourself"
  log "installing $* (Debian packages)"
  if [ -z "$APT_UPDATED" ]; then
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}

ensure_postgres() {
  port_open 5432 && return 0
  local fresh=""
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
    fresh=1
  fi
  log "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster (pg_createcluster)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
      || as_root pg_ctlcluster "$version" main start || true
  else
    as_root service postgresql start || true
  fi
  wait_port 5432 30 || die "PostgreSQL did not come up on 127.0.0.1:5432"
  if [ -n "$fresh" ]; then
    # A fresh Debian cluster wants a password over TCP: give the postgres role the
    # one our default DATABASE_URL uses (local development only).
    as_root su postgres -c "psql -q -c \"ALTER ROLE postgres PASSWORD 'postgres'\"" >/dev/null \
      || log "could not set the postgres password; set DATABASE_URL to credentials that work"
  fi
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || as_root service rabbitmq-server start || true
    wait_port 5672 90 || die "RabbitMQ did not come up on 127.0.0.1:5672"
  fi
  # Tests create a vhost each through the management API.
  if ! port_open 15672; then
    log "enabling the RabbitMQ management plugin"
    as_root rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null \
      || die "could not enable rabbitmq_management (tests need its API on 127.0.0.1:15672)"
    wait_port 15672 60 || die "RabbitMQ management API did not come up on 127.0.0.1:15672"
  fi
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/tollgate.log >/dev/null \
    || die "could not start redis-server"
  wait_port 6379 30 || die "Redis did not come up on 127.0.0.1:6379"
}

services=("$@")
[ ${#services[@]} -eq 0 ] && services=(postgres rabbitmq redis)
for service in "${services[@]}"; do
  case "$service" in
    postgres) ensure_postgres ;;
    rabbitmq) ensure_rabbitmq ;;
    redis) ensure_redis ;;
    *) die "unknown service '$service' (postgres, rabbitmq, redis)" ;;
  esac
done

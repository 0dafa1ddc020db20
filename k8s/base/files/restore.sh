#!/usr/bin/env bash
# Restores a scripts/backup.sh dump into DATABASE_URL, replacing what is there,
# in one transaction (all or nothing). Stop billing first.
# Usage: DATABASE_URL=postgres://... scripts/restore.sh FILE
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must name the database to restore into}"
file=${1:?usage: scripts/restore.sh FILE}
[ -r "$file" ] || { echo "restore: cannot read $file" >&2; exit 1; }
command -v pg_restore >/dev/null || { echo "restore: pg_restore not found (Debian: postgresql-client)" >&2; exit 1; }
pg_restore --clean --if-exists --no-owner --no-privileges --single-transaction --dbname="$DATABASE_URL" "$file"
echo "restored $file"

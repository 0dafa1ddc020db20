#!/usr/bin/env bash
# Backs up billing's PostgreSQL database (everything Tollgate stores) with pg_dump.
# Usage: DATABASE_URL=postgres://... scripts/backup.sh [FILE]
#        FILE defaults to backups/tollgate-<UTC time>.dump (custom format; restore with scripts/restore.sh).
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must name the database to back up}"
command -v pg_dump >/dev/null || { echo "backup: pg_dump not found (Debian: postgresql-client)" >&2; exit 1; }
file=${1:-backups/tollgate-$(date -u +%Y%m%dT%H%M%SZ).dump}
mkdir -p "$(dirname "$file")"
pg_dump --format=custom --no-owner --no-privileges --file="$file" "$DATABASE_URL"
echo "$file"

#!/bin/bash
# Runs once, when the official image initialises its data directory.
set -euo pipefail
# The image's pg_hba.conf admits "all" databases, which does not cover replication connections.
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "SET audit.export_dir = '/var/lib/audit-export'" \
    -f /audit-tail/install.sql
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "ALTER ROLE audit_tail PASSWORD '${AUDIT_TAIL_PASSWORD}'"

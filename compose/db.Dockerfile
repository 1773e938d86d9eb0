# PostgreSQL 15 with pg_cron; sql/install.sql runs at the first start (docker-entrypoint-initdb.d).
FROM postgres:15-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15-cron \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/audit-export \
    && chown postgres:postgres /var/lib/audit-export
COPY sql/install.sql /audit-tail/install.sql
COPY compose/initdb.sh /docker-entrypoint-initdb.d/10-audit-tail.sh

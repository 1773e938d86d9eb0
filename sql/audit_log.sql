-- audit-tail: the generic log. Any table a user tracks writes one row per changed row (one per
-- TRUNCATE statement) into audit.log, which the live stream and, later, the nightly export read.
--
-- Install after sql/install.sql (it adds audit.log to install.sql's publication), in the same
-- database:
--
--     psql -v ON_ERROR_STOP=1 -f sql/install.sql -f sql/audit_log.sql
--
-- `audit-tail setup` runs both. Running it again is safe: the log's rows, the tracked tables and
-- their options are kept; the functions are replaced.
--
-- Then, as the owner of the schema audit (the installer) or a superuser:
--
--     SELECT audit.track('public.orders', ignore => ARRAY['updated_at'], redact => ARRAY['card_number']);
--     SELECT audit.untrack('public.orders');
--     SELECT * FROM audit.tracked;
--
-- The columns of audit.log, in this order, are the CSV contract of the stream's files
-- (audit.log_stream_YYYYMMDD.csv). Do not reorder them. See docs/audit-log.md.
--
-- One file, in this order (search for the name): storage (audit.log, its DEFAULT and settings,
-- audit.log_exports and audit.log_fingerprint, audit.revoke_grants, audit.create_log_partition
-- and audit.log_partitions); retention (audit.retention_plan, audit.retain, audit.log_storage);
-- the trigger (audit.row_image, audit.changed_at, audit.log_change, audit.log_changes); pausing
-- (audit.pause, audit.resume); tracking (audit.track, audit.untrack, audit.retrack_altered, the
-- view audit.tracked); privileges; the nightly export (audit.log_rows, audit.export_log,
-- audit.nightly_log); the indexes of `history --dsn`. It stays one file on purpose: it is what
-- psql -f, `audit-tail setup` (which embeds it) and a migration tool apply as it is; psql's \ir
-- would work for psql reading a file only (not stdin, setup or a migration tool).

BEGIN;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'users_audit_pub') THEN
        RAISE EXCEPTION 'audit-tail: publication users_audit_pub does not exist in database %', current_database()
            USING HINT = 'run sql/install.sql first: psql -v ON_ERROR_STOP=1 -f sql/install.sql -f sql/audit_log.sql';
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS audit;

-- A log installed before the log was partitioned (a plain table): set aside under the name
-- audit.log_unpartitioned, with its indexes and identity sequence, so that the partitioned log
-- can take the names; its rows, with their ids, are moved into the new log below (the NOTICE
-- says how many). audit.log_rows returns audit.log's row type: dropped here, made again below.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_class WHERE oid = to_regclass('audit.log') AND relkind = 'r') THEN
        IF to_regclass('audit.log_unpartitioned') IS NOT NULL THEN
            RAISE EXCEPTION 'audit-tail: both audit.log (not partitioned) and audit.log_unpartitioned exist'
                USING DETAIL = 'an earlier move of the log into partitions stopped halfway. Nothing was changed.',
                      HINT = 'compare the two tables; drop audit.log_unpartitioned if its rows are all in audit.log, then run the script again';
        END IF;
        DROP FUNCTION IF EXISTS audit.log_rows(DATE);
        IF EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname = 'users_audit_pub' AND r.prrelid = 'audit.log'::regclass) THEN
            ALTER PUBLICATION users_audit_pub DROP TABLE audit.log;
        END IF;
        ALTER TABLE audit.log RENAME TO log_unpartitioned;
        ALTER SEQUENCE IF EXISTS audit.log_id_seq RENAME TO log_unpartitioned_id_seq;
        ALTER INDEX IF EXISTS audit.log_pkey RENAME TO log_unpartitioned_pkey;
        ALTER INDEX IF EXISTS audit.log_changed_at_idx RENAME TO log_unpartitioned_changed_at_idx;
        ALTER INDEX IF EXISTS audit.log_table_idx RENAME TO log_unpartitioned_table_idx;
    END IF;
END
$$;

-- One row per changed row of a tracked table, partitioned by day on changed_at: the partition
-- audit.log_YYYYMMDD holds the rows of that day, which are the day's nightly export file and the
-- day's stream file. audit.log_default catches a row of a day that has no partition yet, so that
-- a write never fails (audit.log_partitions() moves such rows into their day's partition once it
-- is created; `audit-tail status` warns while DEFAULT holds rows). The publication publishes
-- through the root (publish_via_partition_root), so the stream sees one table, audit.log.
--
-- The primary key is (id, changed_at): PostgreSQL requires a partitioned table's unique keys to
-- include the partition key. id alone stays unique because it is GENERATED ALWAYS by one identity
-- sequence, which only the log's owner can override (OVERRIDING SYSTEM VALUE); the key does not
-- check it by itself: two rows of different days with one id would not be refused.
--
-- changed_at is the transaction's start as a timestamp in the log's own zone,
-- audit.log_settings.time_zone (fixed at install, see there), whatever the writing session's
-- TimeZone: no session can move its rows into another day. The stream's file of a row is the date
-- of this column, as users_audit's is the date of users_audit.changed_at (which keeps its
-- reference rule: the session's TimeZone).
CREATE TABLE IF NOT EXISTS audit.log (
    id               BIGINT GENERATED ALWAYS AS IDENTITY,
    changed_at       TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    op               TEXT NOT NULL
                     CONSTRAINT log_op_check CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'PAUSE', 'RESUME')),
    schema_name      TEXT,  -- NULL only on PAUSE and RESUME rows, which name no table
    table_name       TEXT,
    key              JSONB,
    old_key          JSONB,
    new_row          JSONB,
    old_values       JSONB,
    changed_columns  TEXT[],
    statement_at     TIMESTAMPTZ NOT NULL DEFAULT statement_timestamp(),
    txid             BIGINT NOT NULL DEFAULT txid_current(),
    actor            TEXT NOT NULL,
    reason           TEXT,
    request_id       TEXT,
    migration        TEXT,
    context          JSONB,
    application_name TEXT,
    client_addr      INET,
    CONSTRAINT log_pkey PRIMARY KEY (id, changed_at)
) PARTITION BY RANGE (changed_at);

CREATE TABLE IF NOT EXISTS audit.log_default PARTITION OF audit.log DEFAULT;

-- A log installed before PAUSE and RESUME existed: widen its op check and let those rows name no
-- table. Each step runs only when needed (a re-install takes no lock for them), and the wider
-- check is added NOT VALID: every row already there passed the narrower one, so no scan of the
-- log is needed, while every new row is checked.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'audit.log'::regclass
                   AND conname = 'log_op_check' AND pg_get_constraintdef(oid) LIKE '%PAUSE%RESUME%') THEN
        ALTER TABLE audit.log DROP CONSTRAINT IF EXISTS log_op_check;
        ALTER TABLE audit.log ADD CONSTRAINT log_op_check
            CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'PAUSE', 'RESUME')) NOT VALID;
    END IF;
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'audit.log'::regclass
               AND attname IN ('schema_name', 'table_name') AND attnotnull) THEN
        ALTER TABLE audit.log ALTER COLUMN schema_name DROP NOT NULL,
                              ALTER COLUMN table_name DROP NOT NULL;
    END IF;
END
$$;

-- "The rows of day D" is changed_at >= D AND changed_at < D + 1, as for users_audit.
CREATE INDEX IF NOT EXISTS log_changed_at_idx ON audit.log (changed_at);
CREATE INDEX IF NOT EXISTS log_table_idx ON audit.log (schema_name, table_name, changed_at);

-- How the log's storage is kept: days_ahead, how many days after today have their partition
-- made by the install and by the nightly job; retention, how long the nightly job keeps a day
-- (NULL: for ever) when it calls audit.retain; time_zone, the zone of changed_at, and so of every
-- day of the log (partitions, exports, retention, the stream's files). One row.
CREATE TABLE IF NOT EXISTS audit.log_settings (
    one        BOOLEAN PRIMARY KEY DEFAULT true CONSTRAINT log_settings_one_row CHECK (one),
    days_ahead INTEGER NOT NULL DEFAULT 7 CONSTRAINT log_settings_days_ahead CHECK (days_ahead BETWEEN 0 AND 366),
    retention  INTERVAL CONSTRAINT log_settings_retention CHECK (retention >= INTERVAL '1 day'),
    time_zone  TEXT
);
INSERT INTO audit.log_settings DEFAULT VALUES ON CONFLICT DO NOTHING;

-- time_zone is fixed at the first install: the server's TimeZone as configured, that is the
-- value postgresql.conf (or ALTER SYSTEM) gives it, read from pg_file_settings, never the
-- installer's session (PGTZ, SET TimeZone, ALTER ROLE/DATABASE ... SET). Where pg_file_settings
-- cannot be read (an installer that is not a superuser) or sets no TimeZone: log_timezone, which
-- initdb sets to the same zone and which no session can change. A re-install keeps it. Changing
-- it later (UPDATE audit.log_settings SET time_zone = ...) takes effect at once (the trigger below
-- replaces audit.changed_at()), for new rows only: choose it before tracking tables.
DO $$
DECLARE
    zone TEXT;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'audit.log_settings'::regclass
                   AND attname = 'time_zone' AND NOT attisdropped) THEN
        ALTER TABLE audit.log_settings ADD COLUMN time_zone TEXT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = 'audit.log_settings'::regclass
                   AND conname = 'log_settings_time_zone') THEN
        -- AT TIME ZONE refuses a zone PostgreSQL does not know: so does the row. (NULL only
        -- until the UPDATE below; the trigger below refuses to set it back to NULL.)
        ALTER TABLE audit.log_settings ADD CONSTRAINT log_settings_time_zone
            CHECK (time_zone IS NULL OR (now() AT TIME ZONE time_zone) IS NOT NULL);
    END IF;
    IF (SELECT time_zone FROM audit.log_settings) IS NULL THEN
        BEGIN
            SELECT f.setting INTO zone FROM pg_file_settings f
            WHERE f.name = 'timezone' AND f.applied AND f.error IS NULL
            ORDER BY f.seqno DESC LIMIT 1;
        EXCEPTION WHEN insufficient_privilege THEN
            zone := NULL;
        END;
        UPDATE audit.log_settings SET time_zone = coalesce(zone, current_setting('log_timezone'));
    END IF;
END
$$;

-- The log's current date and time, in its zone (audit.log_settings.time_zone): what decides
-- which partitions are due, which day the nightly job exports and how old a day is.
CREATE OR REPLACE FUNCTION audit.log_now() RETURNS TIMESTAMP
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT now() AT TIME ZONE (SELECT s.time_zone FROM audit.log_settings s) $$;

CREATE OR REPLACE FUNCTION audit.log_today() RETURNS DATE
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT audit.log_now()::date $$;

-- The days whose nightly export was written: audit.export_log records the day, the file, how
-- many rows it wrote and a fingerprint of their ids (lowest, highest, sum, and sum of a hash of
-- each), once COPY has written all of them (a failed export records nothing). Retention drops
-- only a day recorded here, exported after the day ended, whose partition holds now exactly the
-- rows of that fingerprint; it then sets dropped_at, so that rows of the day written later (in a
-- partition made again) count as never exported, and export_log does not overwrite the file of
-- the dropped rows.
CREATE TABLE IF NOT EXISTS audit.log_exports (
    day         DATE PRIMARY KEY,
    path        TEXT NOT NULL,
    rows        BIGINT NOT NULL,
    exported_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'audit.log_exports'::regclass
                   AND attname = 'dropped_at' AND NOT attisdropped) THEN
        ALTER TABLE audit.log_exports ADD COLUMN min_id BIGINT, ADD COLUMN max_id BIGINT,
            ADD COLUMN id_sum NUMERIC, ADD COLUMN id_hash NUMERIC, ADD COLUMN dropped_at TIMESTAMPTZ;
    END IF;
END
$$;

-- The fingerprint of a set of log rows, as audit.log_exports keeps it: compared column by column.
CREATE OR REPLACE FUNCTION audit.log_fingerprint(rel REGCLASS, day DATE,
    OUT rows BIGINT, OUT min_id BIGINT, OUT max_id BIGINT, OUT id_sum NUMERIC, OUT id_hash NUMERIC)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('SELECT count(*), min(id), max(id), coalesce(sum(id), 0), coalesce(sum(hashint8extended(id, 0)), 0) '
                   'FROM %s WHERE changed_at >= $1 AND changed_at < $1 + 1', rel)
    INTO rows, min_id, max_id, id_sum, id_hash USING day;
END
$$;

-- The partitions of the log: one row per day partition (day, its table, its rows are not
-- counted here), in order of day. DEFAULT is not listed.
-- The day is read from the partition's bound, which pg_get_expr writes in the DateStyle in
-- effect: pinned to ISO here (and on every function of the storage that writes or reads a day
-- as text), so that a session's DateStyle ('SQL, DMY' say) breaks nothing.
CREATE OR REPLACE FUNCTION audit.log_days() RETURNS TABLE (day DATE, partition REGCLASS)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
AS $$
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([0-9-]+)')::date, c.oid::regclass
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit.log'::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    ORDER BY 1
$$;

-- Takes every privilege on a table of the log away from every role but its owner, PUBLIC
-- included, column privileges too: a grant given by mistake (GRANT ALL) or by default privileges
-- (ALTER DEFAULT PRIVILEGES ... GRANT ALL ON TABLES) would let a role write, or add a trigger that
-- runs as whoever writes the log (its owner: the trigger function is SECURITY DEFINER). With
-- keep_select, a role that could SELECT keeps that (a reader someone chose), and nothing else.
-- The one place the log's grants are stripped: the log, its partitions and DEFAULT, the side
-- tables, and the identity sequence of its ids (a sequence too, as REVOKE ... ON SEQUENCE).
CREATE OR REPLACE FUNCTION audit.revoke_grants(tbl REGCLASS, keep_select BOOLEAN) RETURNS VOID
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g RECORD;
    kind TEXT := CASE WHEN (SELECT relkind FROM pg_class WHERE oid = tbl) = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END;
BEGIN
    EXECUTE format('REVOKE ALL ON %s %s FROM PUBLIC', kind, tbl);
    FOR g IN SELECT a.grantee::regrole::text AS grantee, bool_or(a.privilege_type = 'SELECT') AS reads
             FROM (SELECT (aclexplode(c.relacl)).* FROM pg_class c WHERE c.oid = tbl
                   UNION ALL
                   SELECT (aclexplode(t.attacl)).* FROM pg_attribute t WHERE t.attrelid = tbl AND t.attacl IS NOT NULL) a
             WHERE a.grantee <> 0 AND a.grantee <> (SELECT relowner FROM pg_class WHERE oid = tbl)
             GROUP BY a.grantee LOOP
        EXECUTE format('REVOKE ALL ON %s %s FROM %s', kind, tbl, g.grantee);
        IF keep_select AND g.reads THEN
            EXECUTE format('GRANT SELECT ON %s %s TO %s', kind, tbl, g.grantee);
        END IF;
    END LOOP;
END
$$;

-- Creates the partition of day (audit.log_YYYYMMDD) unless it exists; returns whether it did.
-- Rows of that day that landed in DEFAULT meanwhile are moved into it, with their ids (they were
-- streamed when they were written; the move is not published again). The partition is made as
-- a table of its own, filled, then attached: attaching checks that DEFAULT holds no row of the
-- day, which is then true.
CREATE OR REPLACE FUNCTION audit.create_log_partition(day DATE) RETURNS BOOLEAN
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
SET lock_timeout = '10s'
AS $$
DECLARE
    name TEXT := 'log_' || to_char(day, 'YYYYMMDD');
    moved BIGINT;
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'audit.create_log_partition: day must not be NULL';
    END IF;
    -- The install and the job may run at once: one creates, the other then finds it. The checks
    -- read the catalog as it is now (to_regclass, pg_partition_root), not through this
    -- transaction's snapshot: a REPEATABLE READ caller would not see a partition made meanwhile.
    PERFORM pg_advisory_xact_lock(hashtext('audit-tail: audit.log partitions'));
    IF pg_partition_root(to_regclass(format('audit.%I', name))) = 'audit.log'::regclass
       OR EXISTS (SELECT FROM audit.log_days() d WHERE d.day = create_log_partition.day) THEN
        RETURN false;
    END IF;
    -- Writes of days without a partition wait (reads go on) until the partition is attached: a
    -- row of the day written into DEFAULT after the move below would make the ATTACH fail.
    BEGIN
        LOCK TABLE audit.log_default IN EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'audit-tail: cannot create the partition of % of audit.log: audit.log_default was written by a transaction that lasted longer than % (lock_timeout)',
                        day, current_setting('lock_timeout')
            USING HINT = 'nothing is lost meanwhile: a day without a partition is written into audit.log_default. Run SELECT audit.log_partitions() again once that transaction has ended (pg_stat_activity shows it)';
    END;
    IF to_regclass(format('audit.%I', name)) IS NOT NULL THEN
        RAISE EXCEPTION 'audit-tail: cannot create the partition of % of audit.log: a table audit.% exists and is not that partition', day, name
            USING HINT = format('a partition detached by hand? attach it again (ALTER TABLE audit.log ATTACH PARTITION audit.%I FOR VALUES FROM (%L) TO (%L)), or rename or drop it',
                                name, day::timestamp, (day + 1)::timestamp);
    END IF;
    EXECUTE format('CREATE TABLE audit.%I (LIKE audit.log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format('ALTER TABLE audit.%I ADD CONSTRAINT %I CHECK (changed_at >= %L AND changed_at < %L)',
                   name, name || '_day', day::timestamp, (day + 1)::timestamp);
    EXECUTE format('WITH m AS (DELETE FROM audit.log_default WHERE changed_at >= %L AND changed_at < %L RETURNING *) '
                   'INSERT INTO audit.%I SELECT * FROM m', day::timestamp, (day + 1)::timestamp, name);
    GET DIAGNOSTICS moved = ROW_COUNT;
    -- Named after the log's index, which ATTACH adopts it for: log_changed_at_idx_YYYYMMDD.
    EXECUTE format('CREATE INDEX %I ON audit.%I (changed_at)',
                   'log_changed_at_idx_' || to_char(day, 'YYYYMMDD'), name);
    EXECUTE format('ALTER TABLE audit.log ATTACH PARTITION audit.%I FOR VALUES FROM (%L) TO (%L)',
                   name, day::timestamp, (day + 1)::timestamp);
    -- The check only spared ATTACH a scan: the partition's bound says the same.
    EXECUTE format('ALTER TABLE audit.%I DROP CONSTRAINT %I', name, name || '_day');
    -- Default privileges of the creating role (ALTER DEFAULT PRIVILEGES) gave it grants: none.
    PERFORM audit.revoke_grants(format('audit.%I', name)::regclass, false);
    IF moved > 0 THEN
        RAISE NOTICE 'audit-tail: moved % rows of % from audit.log_default into its new partition audit.%', moved, day, name;
    END IF;
    RETURN true;
END
$$;

-- The partitions of yesterday, today and the next days_ahead days (audit.log_settings), in the
-- log's zone (audit.log_today()), and of every day that has rows in DEFAULT, created where
-- missing: run by the install and by the nightly job. Yesterday's, so that a transaction that
-- began before midnight and commits after finds its day's partition. Returns how many were
-- created.
CREATE OR REPLACE FUNCTION audit.log_partitions() RETURNS INTEGER
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
    d DATE;
    made INTEGER := 0;
BEGIN
    FOR d IN SELECT audit.log_today() + n FROM generate_series(-1, (SELECT days_ahead FROM audit.log_settings)) AS n
             UNION SELECT DISTINCT changed_at::date FROM audit.log_default ORDER BY 1 LOOP
        IF audit.create_log_partition(d) THEN
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END
$$;

-- The rows of a log that was not partitioned (set aside above) move into the partitioned log:
-- each day they cover gets its partition, every row keeps its id, the identity continues after
-- the highest id, and the SELECT grants given on the old table are given on the new one.
DO $$
DECLARE
    moved BIGINT;
    last_id BIGINT;
    seq TEXT;
    cols TEXT;
    g RECORD;
BEGIN
    IF to_regclass('audit.log_unpartitioned') IS NULL THEN
        RETURN;
    END IF;
    -- Columns the old log has that the new one does not (yet): added, in their order, so that
    -- nothing is lost and the CSV's column order stays.
    FOR g IN SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
             FROM pg_attribute a
             WHERE a.attrelid = 'audit.log_unpartitioned'::regclass AND a.attnum > 0 AND NOT a.attisdropped
               AND NOT EXISTS (SELECT FROM pg_attribute b WHERE b.attrelid = 'audit.log'::regclass
                               AND b.attname = a.attname AND NOT b.attisdropped)
             ORDER BY a.attnum LOOP
        EXECUTE format('ALTER TABLE audit.log ADD COLUMN %I %s', g.attname, g.type);
    END LOOP;
    PERFORM audit.create_log_partition(d)
    FROM (SELECT DISTINCT changed_at::date AS d FROM audit.log_unpartitioned) AS days;
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
    FROM pg_attribute WHERE attrelid = 'audit.log_unpartitioned'::regclass AND attnum > 0 AND NOT attisdropped;
    EXECUTE format('INSERT INTO audit.log (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM audit.log_unpartitioned ORDER BY id',
                   cols, cols);
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT max(id) INTO last_id FROM audit.log_unpartitioned;
    seq := pg_get_serial_sequence('audit.log_unpartitioned', 'id');
    IF seq IS NOT NULL THEN
        EXECUTE format('SELECT greatest(%s::bigint, last_value) FROM %s', coalesce(last_id, 0), seq) INTO last_id;
    END IF;
    IF last_id IS NOT NULL THEN
        PERFORM setval(pg_get_serial_sequence('audit.log', 'id'), last_id);
    END IF;
    FOR g IN SELECT DISTINCT a.grantee::regrole::text AS grantee
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'audit.log_unpartitioned'::regclass AND a.grantee <> 0
               AND a.grantee <> c.relowner AND a.privilege_type = 'SELECT' LOOP
        EXECUTE format('GRANT SELECT ON audit.log TO %s', g.grantee);
    END LOOP;
    DROP TABLE audit.log_unpartitioned;
    RAISE NOTICE 'audit-tail: audit.log is now partitioned by day: its % rows were moved into it with their ids', moved
        USING DETAIL = 'one partition per day, audit.log_YYYYMMDD, and audit.log_default for a day that has none. '
                       'Days exported before the move are not recorded as exported (audit.log_exports), so retention keeps them.',
              HINT = 'to let retention drop them, export them again (the same rows into the same files): '
                     'SELECT audit.export_log(day) FROM audit.log_days() WHERE day < audit.log_today()';
END
$$;

SELECT audit.log_partitions();

-- What retention with keep would do to each day that ended more than keep ago (DEFAULT is never
-- dropped): droppable only when audit.log_exports shows the day exported, by an export that ran
-- after the day had ended and wrote exactly the rows the partition holds now (their fingerprint:
-- count, lowest and highest id, sum of ids and of their hashes). Any other day is kept: never
-- exported (the job did not run, or failed), exported while the day was still running (a manual
-- export_log(audit.log_today())), other rows than were exported, or rows written after retention
-- dropped the day (its export file holds the dropped ones). why says which.
CREATE OR REPLACE FUNCTION audit.retention_plan(keep INTERVAL)
RETURNS TABLE (day DATE, partition REGCLASS, rows BIGINT, path TEXT, droppable BOOLEAN, why TEXT)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
AS $$
#variable_conflict use_column
DECLARE
    p RECORD;
    e RECORD;
    f RECORD;
BEGIN
    IF keep IS NULL OR keep < INTERVAL '1 day' THEN
        RAISE EXCEPTION 'audit.retain: keep must be at least one day, not %', coalesce(keep::text, 'NULL')
            USING HINT = 'for example audit.retain(''90 days'')';
    END IF;
    FOR p IN SELECT d.day, d.partition FROM audit.log_days() d
             WHERE (d.day + 1)::timestamp <= audit.log_now() - keep ORDER BY d.day LOOP
        day := p.day;
        partition := p.partition;
        SELECT * INTO f FROM audit.log_fingerprint(p.partition, p.day);
        rows := f.rows;
        SELECT x.* INTO e FROM audit.log_exports x WHERE x.day = p.day;
        path := e.path;
        droppable := false;
        IF NOT FOUND THEN
            why := 'it was never exported';
        ELSIF e.dropped_at IS NOT NULL THEN
            why := format('its rows were written after retention dropped the day at %s: they were never exported (%s holds the dropped ones)',
                          e.dropped_at, e.path);
        ELSIF (e.exported_at AT TIME ZONE (SELECT time_zone FROM audit.log_settings)) < (p.day + 1)::timestamp THEN
            why := format('its export (%s) ran before the day ended', e.path);
        ELSIF rows <> e.rows THEN
            why := format('it holds %s rows, its export %s wrote %s', rows, e.path, e.rows);
        ELSIF e.id_sum IS NULL THEN
            why := format('its export %s has no fingerprint of its rows (an earlier version wrote it)', e.path);
        ELSIF (f.min_id, f.max_id, f.id_sum, f.id_hash) IS DISTINCT FROM (e.min_id, e.max_id, e.id_sum, e.id_hash) THEN
            why := format('it holds other rows than its export %s wrote (as many, not the same ids)', e.path);
        ELSE
            droppable := true;
            why := format('exported to %s at %s', e.path, e.exported_at);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- audit.retain(keep): detaches and drops the partition of every day that retention_plan(keep)
-- finds droppable, and keeps the others. A NOTICE says, for each old day, why it was dropped or
-- kept. Returns how many days were dropped. The nightly job calls it with
-- audit.log_settings.retention when that is set.
CREATE OR REPLACE FUNCTION audit.retain(keep INTERVAL) RETURNS INTEGER
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
SET lock_timeout = '2s'
AS $$
DECLARE
    p RECORD;
    f RECORD;
    e RECORD;
    dropped INTEGER := 0;
BEGIN
    FOR p IN SELECT * FROM audit.retention_plan(keep) LOOP
        IF NOT p.droppable THEN
            RAISE NOTICE 'audit-tail: kept % (%): %', p.day, p.partition, p.why
                USING HINT = CASE
                    WHEN p.why LIKE '%after retention dropped%' THEN
                        format('move %s aside (it holds the rows dropped before), then export the day again: SELECT audit.export_log(%L)',
                               p.path, p.day)
                    ELSE format('export it %s: SELECT audit.export_log(%L)',
                                CASE WHEN p.path IS NULL THEN 'first' ELSE 'again' END, p.day) END;
            CONTINUE;
        END IF;
        BEGIN
            -- No row may arrive between the fingerprint and the drop.
            EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', p.partition);
            SELECT * INTO f FROM audit.log_fingerprint(p.partition, p.day);
            SELECT * INTO e FROM audit.log_exports x WHERE x.day = p.day;
            IF (f.rows, f.min_id, f.max_id, f.id_sum, f.id_hash) IS DISTINCT FROM (e.rows, e.min_id, e.max_id, e.id_sum, e.id_hash) THEN
                RAISE NOTICE 'audit-tail: kept % (%): rows arrived while retention ran', p.day, p.partition;
                CONTINUE;
            END IF;
            EXECUTE format('ALTER TABLE audit.log DETACH PARTITION %s', p.partition);
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'audit-tail: kept % (%): audit.log was in use for longer than % (a long query or transaction on the log); it is dropped by a later run',
                p.day, p.partition, current_setting('lock_timeout')
                USING HINT = 'detaching needs a moment alone with audit.log; waiting longer would hold up every write of every tracked table. See pg_stat_activity for what holds it.';
            CONTINUE;
        END;
        RAISE NOTICE 'audit-tail: dropped % (%, % rows): %', p.day, p.partition, p.rows, p.why;
        EXECUTE format('DROP TABLE %s', p.partition);
        UPDATE audit.log_exports x SET dropped_at = clock_timestamp() WHERE x.day = p.day;
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;

-- The log's storage as `audit-tail status` shows it (jsonb): the settings, the days that have a
-- partition, the days due (today + days_ahead without one), the rows in DEFAULT and their days,
-- and what retention, when set, would do now. SECURITY DEFINER so that the consumer's role,
-- which may read only audit.log, can run it; it changes nothing.
CREATE OR REPLACE FUNCTION audit.log_storage() RETURNS JSONB
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
    s RECORD;
BEGIN
    SELECT * INTO STRICT s FROM audit.log_settings;
    RETURN jsonb_build_object(
        'days_ahead', s.days_ahead,
        'retention', s.retention::text,
        'time_zone', s.time_zone,
        'partitions', (SELECT coalesce(jsonb_agg(d.day::text ORDER BY d.day), '[]') FROM audit.log_days() d),
        'due', (SELECT coalesce(jsonb_agg(n.day::text ORDER BY n.day), '[]')
                FROM (SELECT audit.log_today() + i AS day FROM generate_series(-1, s.days_ahead) AS i) n
                WHERE n.day NOT IN (SELECT d.day FROM audit.log_days() d)),
        'default_rows', (SELECT count(*) FROM audit.log_default),
        'default_days', (SELECT coalesce(jsonb_agg(x.day::text ORDER BY x.day), '[]')
                         FROM (SELECT DISTINCT changed_at::date AS day FROM audit.log_default) x),
        'retention_plan', CASE WHEN s.retention IS NULL THEN NULL ELSE
            (SELECT coalesce(jsonb_agg(jsonb_build_object('day', r.day::text, 'rows', r.rows,
                                                          'drop', r.droppable, 'why', r.why) ORDER BY r.day), '[]')
             FROM audit.retention_plan(s.retention) r) END);
END
$$;

-- What is tracked, with the options track() was given: the source of audit.tracked and of a
-- re-track. The trigger itself does not read it: its options are its arguments (TG_ARGV).
CREATE TABLE IF NOT EXISTS audit.tracked_tables (
    tbl        REGCLASS PRIMARY KEY,
    only_cols  TEXT[],
    ignore_cols TEXT[],
    redact_cols TEXT[],
    when_expr  TEXT,
    key_cols   TEXT[] NOT NULL,
    tracked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    tracked_by TEXT NOT NULL DEFAULT session_user
);
-- track(..., bulk => true): statement-level triggers over transition tables, for tables written
-- by big statements; false (the default): row-level triggers, cheapest for one-row statements.
ALTER TABLE audit.tracked_tables ADD COLUMN IF NOT EXISTS bulk BOOLEAN NOT NULL DEFAULT false;

-- A tracked table's row as the log shows it: with --only, the listed and key columns alone; with
-- --ignore, without the ignored ones; a redacted column's value replaced by "[redacted]", so the
-- value never reaches the log, only that the column is there (or changed).
CREATE OR REPLACE FUNCTION audit.row_image(r JSONB, mode TEXT, cols TEXT[], redact TEXT[])
RETURNS JSONB
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN img IS NULL OR cardinality(redact) = 0 THEN img
                ELSE img || coalesce((SELECT jsonb_object_agg(c, '"[redacted]"'::jsonb)
                                      FROM unnest(redact) AS c WHERE img ? c), '{}')
           END
    FROM (SELECT CASE mode
                     WHEN 'only' THEN (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}')
                                       FROM jsonb_each(r) AS e WHERE e.key = ANY (cols))
                     WHEN 'ignore' THEN r - cols
                     ELSE r
                 END AS img) AS s
$$;

-- The changed_at of the log rows of this transaction: its start (CURRENT_TIMESTAMP) as a timestamp
-- in the log's zone, audit.log_settings.time_zone, which is written into the body as a constant
-- by audit.define_changed_at(): no lookup per row, and nothing a session sets (TimeZone, a
-- custom setting) can move its rows into another day. One transaction, one day: the midnight
-- rule. audit.define_changed_at() runs at install and whenever time_zone changes (trigger below).
CREATE OR REPLACE FUNCTION audit.define_changed_at() RETURNS VOID
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $def$
BEGIN
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION audit.changed_at() RETURNS TIMESTAMP
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $body$
BEGIN
    RETURN CURRENT_TIMESTAMP AT TIME ZONE %L;
END
$body$
$f$, (SELECT s.time_zone FROM audit.log_settings s));
END
$def$;
SELECT audit.define_changed_at();

CREATE OR REPLACE FUNCTION audit.log_settings_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.time_zone IS NULL THEN
        RAISE EXCEPTION 'audit-tail: audit.log_settings.time_zone must not be NULL'
            USING HINT = 'name a zone, such as ''UTC'' or ''Europe/Paris'' (see pg_timezone_names)';
    END IF;
    PERFORM audit.define_changed_at();
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER log_settings_time_zone AFTER UPDATE OF time_zone ON audit.log_settings
    FOR EACH ROW WHEN (OLD.time_zone IS DISTINCT FROM NEW.time_zone)
    EXECUTE FUNCTION audit.log_settings_changed();

-- A row written into audit.log by hand (the owner's, or a test's) gets the same changed_at.
DO $$
BEGIN
    IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a
        ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'audit.log'::regclass AND a.attname = 'changed_at') IS DISTINCT FROM 'audit.changed_at()' THEN
        ALTER TABLE audit.log ALTER COLUMN changed_at SET DEFAULT audit.changed_at();
    END IF;
END
$$;

-- The one trigger function of every tracked table. Its arguments, baked in by track():
--   TG_ARGV[0] mode: 'all', 'only' or 'ignore'
--   TG_ARGV[1] the columns of that mode (text[] literal; for 'only' the key columns included)
--   TG_ARGV[2] the redacted columns (text[] literal)
--   TG_ARGV[3] the key columns (text[] literal)
-- Arguments, not a lookup in audit.tracked_tables: they cost nothing per row, and a trigger can
-- never disagree with the options it was created with.
--
-- SECURITY DEFINER: it writes audit.log as its owner, so application roles need no privilege on
-- the log and cannot forge, change or erase its rows. The actor is audit.actor when the
-- application set it (SET LOCAL audit.actor = 'alice'), else session_user: current_user is the
-- function's owner here.
CREATE OR REPLACE FUNCTION audit.log_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mode TEXT := TG_ARGV[0];
    cols TEXT[] := TG_ARGV[1]::text[];
    redact TEXT[] := TG_ARGV[2]::text[];
    key_cols TEXT[] := TG_ARGV[3]::text[];
    new_j JSONB;
    old_j JSONB;
    changed TEXT[];
    row_key JSONB;
    prev_key JSONB;
    new_img JSONB;
    old_img JSONB;
    -- No --only/--ignore/--redact (the usual case): the images are the rows as they are, without
    -- a call of audit.row_image per image (measured: most of the time the trigger adds).
    plain BOOLEAN := mode = 'all' AND coalesce(cardinality(redact), 0) = 0;
    ctx TEXT := nullif(current_setting('audit.context', true), '');
    pause_token TEXT := nullif(current_setting('audit.pause_token', true), '');
BEGIN
    -- Paused by audit.pause() in this transaction? The setting alone proves nothing (anyone can
    -- SET LOCAL it): only a token that audit.pause() recorded for this very transaction counts.
    -- Without the setting, the usual case, this costs one lookup of a setting.
    IF pause_token IS NOT NULL AND EXISTS (
        SELECT FROM audit.pauses p
        WHERE p.txid = txid_current() AND p.token::text = pause_token AND p.resumed_at IS NULL) THEN
        RETURN NULL;
    END IF;
    IF TG_NAME = 'audit_log_update_key' THEN
        -- This UPDATE names a key column: its rows are logged here, one by one, and the
        -- statement-level audit_log_update of the same statement (which fires after the row
        -- triggers) must log none of them. See audit.log_changes().
        PERFORM set_config('audit.row_path', TG_RELID::text, true);
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        NULL;
    ELSIF TG_OP = 'INSERT' THEN
        new_j := to_jsonb(NEW);
        row_key := (SELECT jsonb_object_agg(k, new_j -> k) FROM unnest(key_cols) AS k);
        new_img := CASE WHEN plain THEN new_j ELSE audit.row_image(new_j, mode, cols, redact) END;
    ELSIF TG_OP = 'DELETE' THEN
        old_j := to_jsonb(OLD);
        row_key := (SELECT jsonb_object_agg(k, old_j -> k) FROM unnest(key_cols) AS k);
        old_img := CASE WHEN plain THEN old_j ELSE audit.row_image(old_j, mode, cols, redact) END;
    ELSE
        new_j := to_jsonb(NEW);
        old_j := to_jsonb(OLD);
        -- The changed columns in the table's column order (row_to_json keeps it; jsonb does not).
        SELECT array_agg(e.key ORDER BY e.n) INTO changed
        FROM json_each(row_to_json(NEW)) WITH ORDINALITY AS e(key, value, n)
        WHERE (new_j -> e.key) IS DISTINCT FROM (old_j -> e.key)
          AND CASE mode WHEN 'only' THEN e.key = ANY (cols)
                        WHEN 'ignore' THEN NOT e.key = ANY (cols)
                        ELSE true END;
        IF changed IS NULL THEN
            RETURN NULL;  -- nothing audited changed (a no-op, or equal values of another form)
        END IF;
        row_key := (SELECT jsonb_object_agg(k, new_j -> k) FROM unnest(key_cols) AS k);
        prev_key := (SELECT jsonb_object_agg(k, old_j -> k) FROM unnest(key_cols) AS k);
        IF prev_key = row_key THEN
            prev_key := NULL;
        END IF;
        new_img := CASE WHEN plain THEN new_j ELSE audit.row_image(new_j, mode, cols, redact) END;
        old_img := (SELECT jsonb_object_agg(c, old_j -> c) FROM unnest(changed) AS c);
        IF coalesce(cardinality(redact), 0) > 0 THEN
            old_img := audit.row_image(old_img, 'all', NULL, redact);
        END IF;
    END IF;
    INSERT INTO audit.log (changed_at, op, schema_name, table_name, key, old_key, new_row, old_values,
                           changed_columns, actor, reason, request_id, migration, context,
                           application_name, client_addr)
    VALUES (audit.changed_at(), TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, row_key, prev_key, new_img, old_img, changed,
            coalesce(nullif(current_setting('audit.actor', true), ''), session_user::text),
            nullif(current_setting('audit.reason', true), ''),
            nullif(current_setting('audit.request_id', true), ''),
            nullif(current_setting('audit.migration', true), ''),
            ctx::jsonb,
            nullif(current_setting('application_name', true), ''),
            inet_client_addr());
    RETURN NULL;
END
$$;

-- The statement-level trigger function of INSERT, UPDATE and DELETE of a tracked table (without
-- --when): one INSERT ... SELECT over the statement's transition table (new_rows, old_rows)
-- instead of one PL/pgSQL call per row; it writes the rows that audit.log_change() writes for
-- the same statement, in the same order (the order the statement changed the rows). Arguments
-- as for audit.log_change().
--
-- UPDATE pairs each new row with its old row by key (never by position). The pairing is right
-- only when no key changed, so an UPDATE whose SET list names a key column is logged row by row
-- instead: the row-level trigger audit_log_update_key (UPDATE OF the key columns) logs each of its
-- changed rows, with old_key, and leaves the table's oid in the transaction-local setting
-- audit.row_path; this function, fired after the row triggers of the same statement, then logs
-- nothing and clears it.
--
-- The images need no function call per row: the columns a mode drops and the redacted
-- columns' "[redacted]" values are worked out by track() and passed as arguments, so an image is
-- `row - dropped || redacted`, equal to audit.row_image()'s (jsonb has one canonical form).
CREATE OR REPLACE FUNCTION audit.log_changes() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Hash joins over the transition tables, never a nested loop, and no JIT (see log_user_changes()
-- in install.sql): as attributes of the function, not set_config() calls per statement.
SET enable_nestloop = off
SET jit = off
AS $$
DECLARE
    -- TG_ARGV[0..3] as for audit.log_change(); then, worked out by track() from the table's
    -- columns so that no statement queries the catalog (re-tracked by ALTER TABLE):
    --   TG_ARGV[4] the non-key columns (an image minus them is the key)
    --   TG_ARGV[5] the audited columns, in the table's order
    --   TG_ARGV[6] the columns the mode drops from an image
    --   TG_ARGV[7] the redacted columns' replacement, a jsonb object of "[redacted]" values
    redact TEXT[] := coalesce(TG_ARGV[2]::text[], '{}');
    non_key TEXT[] := TG_ARGV[4]::text[];
    audited TEXT[] := TG_ARGV[5]::text[];
    dropped TEXT[] := TG_ARGV[6]::text[];
    redacted JSONB := TG_ARGV[7]::jsonb;
    plain BOOLEAN := cardinality(dropped) = 0 AND cardinality(redact) = 0;
    actor TEXT := coalesce(nullif(current_setting('audit.actor', true), ''), session_user::text);
    reason TEXT := nullif(current_setting('audit.reason', true), '');
    request_id TEXT := nullif(current_setting('audit.request_id', true), '');
    migration TEXT := nullif(current_setting('audit.migration', true), '');
    ctx JSONB := nullif(current_setting('audit.context', true), '')::jsonb;
    app TEXT := nullif(current_setting('application_name', true), '');
    addr INET := inet_client_addr();
    pause_token TEXT := nullif(current_setting('audit.pause_token', true), '');
    paired BIGINT;
    changed_rows BIGINT;
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('audit.row_path', true) = TG_RELID::text THEN
        PERFORM set_config('audit.row_path', '', true);
        RETURN NULL;  -- logged row by row by audit_log_update_key
    END IF;
    IF pause_token IS NOT NULL AND EXISTS (
        SELECT FROM audit.pauses p
        WHERE p.txid = txid_current() AND p.token::text = pause_token AND p.resumed_at IS NULL) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit.log (changed_at, op, schema_name, table_name, key, new_row, actor, reason,
                               request_id, migration, context, application_name, client_addr)
        SELECT (SELECT audit.changed_at()), 'INSERT', TG_TABLE_SCHEMA, TG_TABLE_NAME, r.j - non_key,
               CASE WHEN plain THEN r.j ELSE r.j - dropped || redacted END,
               actor, reason, request_id, migration, ctx, app, addr
        FROM (SELECT to_jsonb(nr.*) AS j, row_number() OVER () AS ord FROM new_rows nr) AS r
        ORDER BY r.ord;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audit.log (changed_at, op, schema_name, table_name, key, old_values, actor, reason,
                               request_id, migration, context, application_name, client_addr)
        SELECT (SELECT audit.changed_at()), 'DELETE', TG_TABLE_SCHEMA, TG_TABLE_NAME, r.j - non_key,
               CASE WHEN plain THEN r.j ELSE r.j - dropped || redacted END,
               actor, reason, request_id, migration, ctx, app, addr
        FROM (SELECT to_jsonb(orw.*) AS j, row_number() OVER () AS ord FROM old_rows orw) AS r
        ORDER BY r.ord;
    ELSE
        WITH n AS MATERIALIZED (
            SELECT to_jsonb(nr.*) AS j, row_number() OVER () AS ord FROM new_rows nr
        ), o AS MATERIALIZED (
            SELECT to_jsonb(orw.*) AS j FROM old_rows orw
        ), joined AS MATERIALIZED (
            SELECT n.j AS nj, o.j AS oj, n.ord FROM n JOIN o ON (o.j - non_key) = (n.j - non_key)
        ), pairs AS (
            SELECT p.nj, p.ord, d.changed, d.old_values
            FROM joined p
            -- The audited columns whose values differ, in the table's order, and their old
            -- values (redacted ones as "[redacted]"), in one pass over the columns.
            CROSS JOIN LATERAL (
                SELECT array_agg(a.c ORDER BY a.i) AS changed,
                       jsonb_object_agg(a.c, CASE WHEN a.c = ANY (redact) THEN '"[redacted]"'::jsonb
                                                  ELSE p.oj -> a.c END) AS old_values
                FROM unnest(audited) WITH ORDINALITY AS a(c, i)
                WHERE (p.nj -> a.c) IS DISTINCT FROM (p.oj -> a.c)) AS d
            WHERE d.changed IS NOT NULL
        ), logged_rows AS (
            INSERT INTO audit.log (changed_at, op, schema_name, table_name, key, new_row, old_values,
                                   changed_columns, actor, reason, request_id, migration, context,
                                   application_name, client_addr)
            SELECT (SELECT audit.changed_at()), 'UPDATE', TG_TABLE_SCHEMA, TG_TABLE_NAME, p.nj - non_key,
                   CASE WHEN plain THEN p.nj ELSE p.nj - dropped || redacted END,
                   p.old_values, p.changed,
                   actor, reason, request_id, migration, ctx, app, addr
            FROM pairs p
            ORDER BY p.ord
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM joined), (SELECT count(*) FROM n) INTO paired, changed_rows;
        IF paired <> changed_rows THEN
            -- A key changed without the UPDATE naming it (a BEFORE trigger changed it): such a
            -- row has no old row of its key. Never fail the application's write for it.
            RAISE WARNING 'audit-tail: % of % updated rows of %.% could not be paired with their old row by key and were not logged',
                changed_rows - paired, changed_rows, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING HINT = 'a key changed by a BEFORE trigger is logged only when the UPDATE names a key column; track the table with a when condition to log every row one by one';
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Switching auditing off for a migration or a bulk load: only members of the role audit_admin
-- (the installer creates it, without members; GRANT audit_admin TO a role to designate it), and
-- only for the rest of the current transaction (or until audit.resume()). Each pause and resume
-- is itself a log row (op PAUSE / RESUME, no table), so the gap in the log is explained there.
--
-- audit.pause() records a random token for this transaction in audit.pauses, which only the
-- installer can write, and sets it transaction-locally in audit.pause_token; log_change() skips
-- a row only when both agree. An application that sets audit.pause_token itself knows no
-- recorded token, so its rows are logged as usual.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_admin') THEN
        CREATE ROLE audit_admin NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created meanwhile by an install in another database of the cluster
END
$$;

CREATE TABLE IF NOT EXISTS audit.pauses (
    txid       BIGINT PRIMARY KEY,
    token      UUID NOT NULL,
    paused_by  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    paused_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    resumed_at TIMESTAMPTZ
);

-- The PAUSE or RESUME row of the log, with the same who / why / from where as any other row.
CREATE OR REPLACE FUNCTION audit.log_switch(op TEXT, why TEXT) RETURNS VOID
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO audit.log (changed_at, op, actor, reason, request_id, migration, context,
                           application_name, client_addr)
    VALUES (audit.changed_at(), op,
            coalesce(nullif(current_setting('audit.actor', true), ''), session_user::text),
            why,
            nullif(current_setting('audit.request_id', true), ''),
            nullif(current_setting('audit.migration', true), ''),
            nullif(current_setting('audit.context', true), '')::jsonb,
            nullif(current_setting('application_name', true), ''),
            inet_client_addr())
$$;

CREATE OR REPLACE FUNCTION audit.pause(reason TEXT) RETURNS VOID
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    token UUID := gen_random_uuid();
    xid BIGINT := txid_current();
BEGIN
    -- session_user: current_user is this function's owner here.
    IF NOT pg_has_role(session_user, 'audit_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'audit-tail: % may not pause auditing', session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only members of the role audit_admin can: GRANT audit_admin TO the role that runs migrations';
    END IF;
    reason := nullif(btrim(reason), '');
    IF reason IS NULL THEN
        RAISE EXCEPTION 'audit.pause: give a reason (it is written to the log)';
    END IF;
    IF EXISTS (SELECT FROM audit.pauses p WHERE p.txid = xid AND p.resumed_at IS NULL) THEN
        RAISE NOTICE 'audit-tail: auditing is paused already in this transaction';
        RETURN;
    END IF;
    INSERT INTO audit.pauses AS p (txid, token, paused_by, reason)
    VALUES (xid, token, session_user, reason)
    ON CONFLICT ON CONSTRAINT pauses_pkey DO UPDATE
        SET token = EXCLUDED.token, paused_by = EXCLUDED.paused_by, reason = EXCLUDED.reason,
            paused_at = now(), resumed_at = NULL;
    PERFORM audit.log_switch('PAUSE', reason);
    PERFORM set_config('audit.pause_token', token::text, true);
END
$$;

-- Ends a pause of this transaction. Returns whether auditing was paused.
CREATE OR REPLACE FUNCTION audit.resume() RETURNS BOOLEAN
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    why TEXT;
BEGIN
    IF NOT pg_has_role(session_user, 'audit_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'audit-tail: % may not resume auditing', session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only members of the role audit_admin can pause and resume auditing';
    END IF;
    UPDATE audit.pauses p SET resumed_at = clock_timestamp()
    WHERE p.txid = txid_current() AND p.resumed_at IS NULL
    RETURNING p.reason INTO why;
    PERFORM set_config('audit.pause_token', '', true);
    IF why IS NULL THEN
        RAISE NOTICE 'audit-tail: auditing was not paused in this transaction';
        RETURN false;
    END IF;
    PERFORM audit.log_switch('RESUME', why);
    RETURN true;
END
$$;

-- The triggers of a tracked table, replaced as a whole by track() and dropped by untrack().
CREATE OR REPLACE FUNCTION audit.drop_triggers(tbl REGCLASS) RETURNS VOID
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t TEXT;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger WHERE tgrelid = tbl AND NOT tgisinternal
               AND tgname IN ('audit_log_insert', 'audit_log_update', 'audit_log_update_key',
                              'audit_log_delete', 'audit_log_truncate') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t, tbl);
    END LOOP;
END
$$;

-- Creates one trigger with the user's WHEN condition when that operation's trigger can evaluate
-- it (NEW exists for INSERT and UPDATE, OLD for UPDATE and DELETE), else without it: a condition
-- on NEW does not hide a DELETE. Returns whether the condition applies.
CREATE OR REPLACE FUNCTION audit.create_trigger(tbl REGCLASS, name TEXT, event TEXT, own_when TEXT,
                                                user_when TEXT, args TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- The user's condition selects the rows it is not false for: a NULL (NEW.st <> 'draft' with
    -- st NULL) audits the row rather than losing it silently.
    cond TEXT := concat_ws(' AND ', '(' || own_when || ')', '((' || user_when || ') IS NOT FALSE)');
    sql TEXT := 'CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW %s EXECUTE FUNCTION audit.log_change(%s)';
BEGIN
    IF user_when IS NOT NULL THEN
        BEGIN
            EXECUTE format(sql, name, event, tbl, 'WHEN (' || cond || ')', args);
            RETURN true;
        EXCEPTION WHEN invalid_object_definition THEN
            -- "INSERT trigger's WHEN condition cannot reference OLD values", and the like.
            NULL;
        END;
    END IF;
    EXECUTE format(sql, name, event, tbl, coalesce('WHEN (' || own_when || ')', ''), args);
    RETURN false;
END
$$;

-- Creates one statement-level trigger over the statement's transition table(s), calling
-- audit.log_changes(). Returns false, having made the row-level trigger instead, where PostgreSQL
-- refuses transition tables (an inheritance child, say).
CREATE OR REPLACE FUNCTION audit.create_stmt_trigger(tbl REGCLASS, name TEXT, event TEXT, args TEXT,
                                                     row_event TEXT DEFAULT NULL, row_when TEXT DEFAULT NULL)
RETURNS BOOLEAN
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    referencing TEXT := CASE event WHEN 'INSERT' THEN 'NEW TABLE AS new_rows'
                                   WHEN 'DELETE' THEN 'OLD TABLE AS old_rows'
                                   ELSE 'OLD TABLE AS old_rows NEW TABLE AS new_rows' END;
BEGIN
    BEGIN
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT '
                       'EXECUTE FUNCTION audit.log_changes(%s)', name, event, tbl, referencing, args);
        RETURN true;
    EXCEPTION WHEN feature_not_supported THEN
        NULL;
    END;
    PERFORM audit.create_trigger(tbl, name, coalesce(row_event, event), row_when, NULL, args);
    RETURN false;
END
$$;

-- track(table, only, ignore, redact, when): audit every INSERT, UPDATE, DELETE and TRUNCATE of
-- the table into audit.log. Running it again replaces the options. SECURITY INVOKER: the caller
-- needs the right to create triggers on the table and to write audit.tracked_tables (the
-- installer, or a superuser).
DROP FUNCTION IF EXISTS audit.track(REGCLASS, TEXT[], TEXT[], TEXT[], TEXT);
CREATE OR REPLACE FUNCTION audit.track(tbl REGCLASS, "only" TEXT[] DEFAULT NULL,
                                       "ignore" TEXT[] DEFAULT NULL, redact TEXT[] DEFAULT NULL,
                                       "when" TEXT DEFAULT NULL, bulk BOOLEAN DEFAULT false)
RETURNS VOID
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel RECORD;
    all_cols TEXT[];
    key_cols TEXT[];
    bad TEXT;
    mode TEXT := 'all';
    mode_cols TEXT[] := '{}';
    audited TEXT[];
    update_of TEXT := '';
    changed_when TEXT;
    args TEXT;
    stmt_args TEXT;
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'audit.track: the table must not be NULL';
    END IF;
    "only" := nullif("only", '{}');
    "ignore" := nullif("ignore", '{}');
    redact := coalesce(redact, '{}');
    "when" := nullif(btrim("when"), '');
    bulk := coalesce(bulk, false);
    IF bulk AND "when" IS NOT NULL THEN
        RAISE EXCEPTION 'audit.track: give bulk or when, not both'
            USING HINT = 'a when condition is evaluated row by row: its table is logged by the row-level triggers';
    END IF;
    SELECT c.relkind, n.nspname, c.relname INTO STRICT rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    -- First: audit.log is itself partitioned, and a partition is a plain table.
    IF rel.nspname = 'audit' THEN
        RAISE EXCEPTION 'audit-tail cannot track %: the tables of schema audit are the log itself', tbl;
    END IF;
    -- A partitioned table's row triggers fire with the partition's name (TG_TABLE_NAME): not yet.
    IF rel.relkind = 'p' THEN
        RAISE EXCEPTION 'audit-tail cannot track %: it is a partitioned table, which audit-tail does not track yet', tbl
            USING HINT = 'track its partitions one by one';
    ELSIF rel.relkind <> 'r' THEN
        RAISE EXCEPTION 'audit-tail cannot track %: it is not a table', tbl
            USING HINT = 'track the table that holds the rows';
    END IF;
    SELECT array_agg(attname::text ORDER BY attnum) INTO all_cols
    FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped;
    -- The key: the primary key, else the replica identity index.
    SELECT array_agg(a.attname::text ORDER BY k.n) INTO key_cols
    FROM (SELECT i.indkey, i.indexrelid FROM pg_index i
          WHERE i.indrelid = tbl AND (i.indisprimary OR i.indisreplident)
          ORDER BY i.indisprimary DESC LIMIT 1) AS i,
         unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n),
         pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum = k.attnum;
    IF key_cols IS NULL THEN
        RAISE EXCEPTION 'audit-tail cannot track %: it has no primary key', tbl
            USING DETAIL = 'each log row names the changed row by its key. Nothing was changed.',
                  HINT = format('add a primary key (ALTER TABLE %s ADD PRIMARY KEY (...)), or a replica identity index (ALTER TABLE %s REPLICA IDENTITY USING INDEX ...)', tbl, tbl);
    END IF;
    IF "only" IS NOT NULL AND "ignore" IS NOT NULL THEN
        RAISE EXCEPTION 'audit.track: give only or ignore, not both'
            USING HINT = 'only lists the columns to audit, ignore the columns not to';
    END IF;
    SELECT string_agg(c, ', ') INTO bad
    FROM unnest(coalesce("only", '{}') || coalesce("ignore", '{}') || redact) AS c
    WHERE NOT c = ANY (all_cols);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'audit-tail cannot track %: it has no column %', tbl, bad
            USING HINT = format('its columns are: %s', array_to_string(all_cols, ', '));
    END IF;
    SELECT string_agg(c, ', ') INTO bad
    FROM unnest(coalesce("ignore", '{}') || redact) AS c WHERE c = ANY (key_cols);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'audit-tail cannot ignore or redact % of %: it is the key that names each log row', bad, tbl;
    END IF;
    IF "only" IS NOT NULL THEN
        mode := 'only';
        mode_cols := (SELECT array_agg(DISTINCT c) FROM unnest("only" || key_cols) AS c);
        SELECT string_agg(c, ', ') INTO bad FROM unnest(redact) AS c WHERE NOT c = ANY (mode_cols);
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'audit-tail cannot redact % of %: it is not among the audited columns (only)', bad, tbl;
        END IF;
    ELSIF "ignore" IS NOT NULL THEN
        mode := 'ignore';
        mode_cols := "ignore";
        SELECT string_agg(c, ', ') INTO bad FROM unnest(redact) AS c WHERE c = ANY ("ignore");
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'audit-tail cannot redact % of %: it is ignored already', bad, tbl;
        END IF;
    END IF;
    -- An UPDATE fires the function only when an audited column changed: UPDATE OF the audited
    -- columns and a WHEN comparing their binary images (*<> works for every type, json too).
    IF mode = 'all' THEN
        changed_when := 'OLD.* *<> NEW.*';
    ELSE
        audited := (SELECT array_agg(c ORDER BY n) FROM unnest(all_cols) WITH ORDINALITY AS a(c, n)
                    WHERE CASE mode WHEN 'only' THEN c = ANY (mode_cols) ELSE NOT c = ANY (mode_cols) END);
        update_of := ' OF ' || (SELECT string_agg(quote_ident(c), ', ') FROM unnest(audited) AS c);
        -- record_image_ne() is the function of *<>. Not `ROW(..)::record *<> ROW(..)::record`:
        -- PostgreSQL stores that without the casts, so pg_dump printed `ROW(..) *<> ROW(..)`,
        -- which compares column by column (no int *<> int) and failed in pg_restore.
        changed_when := format('record_image_ne(ROW(%s), ROW(%s))',
                               (SELECT string_agg('OLD.' || quote_ident(c), ', ') FROM unnest(audited) AS c),
                               (SELECT string_agg('NEW.' || quote_ident(c), ', ') FROM unnest(audited) AS c));
    END IF;
    args := format('%L, %L, %L, %L', mode, mode_cols, redact, key_cols);
    -- The statement-level function's further arguments (see audit.log_changes()): everything it
    -- needs of the table's columns, so that a statement costs no catalog query.
    IF audited IS NULL THEN
        audited := all_cols;
    END IF;
    stmt_args := format('%s, %L, %L, %L, %L', args,
                        ARRAY(SELECT c FROM unnest(all_cols) AS c WHERE NOT c = ANY (key_cols)),
                        audited,
                        ARRAY(SELECT c FROM unnest(all_cols) AS c WHERE NOT c = ANY (audited)),
                        coalesce((SELECT jsonb_object_agg(c, '"[redacted]"'::jsonb) FROM unnest(redact) AS c), '{}'));
    PERFORM audit.drop_triggers(tbl);
    IF bulk THEN
        -- Statement-level INSERT, UPDATE and DELETE (one INSERT ... SELECT per statement, see
        -- audit.log_changes()), and the rows of an UPDATE that names a key column one by one.
        IF audit.create_stmt_trigger(tbl, 'audit_log_update', 'UPDATE', stmt_args, 'UPDATE' || update_of, changed_when) THEN
            PERFORM audit.create_trigger(tbl, 'audit_log_update_key',
                                         'UPDATE OF ' || (SELECT string_agg(quote_ident(c), ', ') FROM unnest(key_cols) AS c),
                                         changed_when, NULL, args);
        END IF;
        PERFORM audit.create_stmt_trigger(tbl, 'audit_log_insert', 'INSERT', stmt_args);
        PERFORM audit.create_stmt_trigger(tbl, 'audit_log_delete', 'DELETE', stmt_args);
    ELSE
        -- The default, and the path of a when condition (on NEW and OLD of each row): row-level
        -- triggers, cheapest for one-row statements, which evaluate the condition before
        -- calling the function.
        PERFORM audit.create_trigger(tbl, 'audit_log_insert', 'INSERT', NULL, "when", args);
        PERFORM audit.create_trigger(tbl, 'audit_log_update', 'UPDATE' || update_of, changed_when, "when", args);
        PERFORM audit.create_trigger(tbl, 'audit_log_delete', 'DELETE', NULL, "when", args);
    END IF;
    EXECUTE format('CREATE TRIGGER audit_log_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION audit.log_change(%s)', tbl, args);
    -- Rows of tables dropped since (their oid names nothing now).
    DELETE FROM audit.tracked_tables t WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.tbl);
    INSERT INTO audit.tracked_tables AS t (tbl, only_cols, ignore_cols, redact_cols, when_expr, key_cols, bulk)
    VALUES (tbl, "only", "ignore", nullif(redact, '{}'), "when", key_cols, bulk)
    ON CONFLICT ON CONSTRAINT tracked_tables_pkey DO UPDATE
        SET only_cols = EXCLUDED.only_cols, ignore_cols = EXCLUDED.ignore_cols,
            redact_cols = EXCLUDED.redact_cols, when_expr = EXCLUDED.when_expr, bulk = EXCLUDED.bulk,
            key_cols = EXCLUDED.key_cols, tracked_at = now(), tracked_by = session_user;
END
$$;

-- untrack(table): stop auditing it. The rows already in audit.log stay. Returns whether the
-- table was tracked.
CREATE OR REPLACE FUNCTION audit.untrack(tbl REGCLASS) RETURNS BOOLEAN
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was BOOLEAN;
BEGIN
    PERFORM audit.drop_triggers(tbl);
    DELETE FROM audit.tracked_tables WHERE tracked_tables.tbl = untrack.tbl;
    was := FOUND;
    IF NOT was THEN
        RAISE NOTICE 'audit-tail: % was not tracked', tbl;
    END IF;
    RETURN was;
END
$$;

-- Triggers created before record_image_ne() (their WHEN cannot be restored from a pg_dump): made
-- again with the same options, keeping when and by whom the table was tracked. So are triggers
-- of the other path than the table's bulk option says (statement-level triggers made before the
-- option, when every table without a when condition got them, become row-level ones), and
-- statement-level triggers without the column arguments audit.log_changes() now takes.
DO $$
DECLARE
    t RECORD;
BEGIN
    FOR t IN SELECT DISTINCT tt.* FROM audit.tracked_tables tt JOIN pg_trigger g ON g.tgrelid = tt.tbl
             WHERE (g.tgname = 'audit_log_update' AND pg_get_triggerdef(g.oid) LIKE '%ROW(old.%*<>%')
                OR (g.tgname = 'audit_log_insert' AND NOT tt.bulk AND g.tgtype & 1 = 0)
                OR (g.tgfoid = 'audit.log_changes()'::regprocedure AND g.tgnargs < 8)
                OR (g.tgname = 'audit_log_insert' AND tt.bulk AND g.tgtype & 1 = 1
                    AND NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = tt.tbl)) LOOP
        PERFORM audit.track(t.tbl, t.only_cols, t.ignore_cols, t.redact_cols, t.when_expr, t.bulk);
        UPDATE audit.tracked_tables SET tracked_at = t.tracked_at, tracked_by = t.tracked_by
        WHERE tbl = t.tbl;
    END LOOP;
END
$$;

-- An ALTER TABLE of a tracked table: its triggers' arguments (the key, the --only / --ignore /
-- --redact columns) and their UPDATE OF / WHEN column lists were baked in by track(), and would
-- be wrong after a change of its key or columns (an ignored column added later would not be in
-- the UPDATE OF list). So the table is tracked again with its options, keeping when and by whom
-- it was tracked and which of its triggers were disabled. A change that leaves it untrackable is
-- refused (the ALTER TABLE fails, nothing changes):
--   - no primary key nor replica identity index any more: the log names each row by its key;
--   - a redacted column gone (dropped or renamed): under a new name its value would reach the
--     log.
-- An --only or --ignore column gone is dropped from the options, with a WARNING.
CREATE OR REPLACE FUNCTION audit.retrack_altered() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t RECORD;
    all_cols TEXT[];
    gone TEXT[];
    disabled RECORD;
    states JSONB;
    new_only TEXT[];
    new_ignore TEXT[];
BEGIN
    IF current_setting('audit.retracking', true) = 'on' THEN
        RETURN;  -- the ALTER TABLE ... DISABLE TRIGGER below
    END IF;
    FOR t IN SELECT DISTINCT tt.* FROM pg_event_trigger_ddl_commands() c
             JOIN audit.tracked_tables tt ON tt.tbl = c.objid
             WHERE c.command_tag = 'ALTER TABLE' AND c.classid = 'pg_class'::regclass LOOP
        SELECT array_agg(attname::text ORDER BY attnum) INTO all_cols
        FROM pg_attribute WHERE attrelid = t.tbl AND attnum > 0 AND NOT attisdropped;
        IF NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = t.tbl AND (i.indisprimary OR i.indisreplident)) THEN
            RAISE EXCEPTION 'audit-tail: this ALTER TABLE leaves the tracked table % without a primary key', t.tbl
                USING DETAIL = 'each log row names the changed row by its key. Nothing was changed.',
                      HINT = format('drop and add the key in one statement (ALTER TABLE %s DROP CONSTRAINT ..., ADD PRIMARY KEY (...)), or stop tracking it first: SELECT audit.untrack(%L)', t.tbl, t.tbl::text);
        END IF;
        gone := ARRAY(SELECT c FROM unnest(t.redact_cols) AS c WHERE NOT c = ANY (all_cols));
        IF cardinality(gone) > 0 THEN
            RAISE EXCEPTION 'audit-tail: this ALTER TABLE drops or renames the redacted column(s) % of the tracked table %', array_to_string(gone, ', '), t.tbl
                USING DETAIL = 'under a new name, the values would reach the log. Nothing was changed.',
                      HINT = format('stop tracking it first (SELECT audit.untrack(%L)), alter it, then track it again with the new redact list', t.tbl::text);
        END IF;
        new_only := nullif(ARRAY(SELECT c FROM unnest(t.only_cols) AS c WHERE c = ANY (all_cols)), '{}');
        new_ignore := nullif(ARRAY(SELECT c FROM unnest(t.ignore_cols) AS c WHERE c = ANY (all_cols)), '{}');
        gone := ARRAY(SELECT c FROM unnest(coalesce(t.only_cols, '{}') || coalesce(t.ignore_cols, '{}')) AS c
                      WHERE NOT c = ANY (all_cols));
        IF cardinality(gone) > 0 THEN
            RAISE WARNING 'audit-tail: the column(s) % of %''s % list are gone (dropped or renamed) and no longer in it',
                array_to_string(gone, ', '), t.tbl, CASE WHEN t.only_cols IS NOT NULL THEN 'only' ELSE 'ignore' END
                USING HINT = format('if one was renamed, track it again with the new name: SELECT audit.track(%L, ...)', t.tbl::text);
            IF t.only_cols IS NOT NULL AND new_only IS NULL THEN
                new_only := t.key_cols;  -- nothing but the key left to audit
            END IF;
        END IF;
        states := coalesce((SELECT jsonb_object_agg(g.tgname, g.tgenabled::text) FROM pg_trigger g
                            WHERE g.tgrelid = t.tbl AND g.tgname LIKE 'audit\_log\_%' AND g.tgenabled <> 'O'), '{}');
        PERFORM audit.track(t.tbl, new_only, new_ignore, t.redact_cols, t.when_expr, t.bulk);
        UPDATE audit.tracked_tables SET tracked_at = t.tracked_at, tracked_by = t.tracked_by WHERE tbl = t.tbl;
        PERFORM set_config('audit.retracking', 'on', true);
        FOR disabled IN SELECT * FROM jsonb_each_text(states) AS s(tgname, tgenabled)
                        WHERE EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.tbl AND g.tgname = s.tgname) LOOP
            EXECUTE format('ALTER TABLE %s %s TRIGGER %I', t.tbl,
                           CASE disabled.tgenabled WHEN 'D' THEN 'DISABLE'
                                                   WHEN 'A' THEN 'ENABLE ALWAYS'
                                                   ELSE 'ENABLE REPLICA' END, disabled.tgname);
        END LOOP;
        PERFORM set_config('audit.retracking', '', true);
        RAISE NOTICE 'audit-tail: % tracked again after ALTER TABLE (key %)', t.tbl,
            (SELECT array_to_string(key_cols, ', ') FROM audit.tracked_tables WHERE tbl = t.tbl);
    END LOOP;
END
$$;

-- Creating an event trigger takes a superuser: an install by another role says so.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'audit_retrack_altered') THEN
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            CREATE EVENT TRIGGER audit_retrack_altered ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
                EXECUTE FUNCTION audit.retrack_altered();
        ELSE
            RAISE WARNING 'audit-tail: not a superuser, so no event trigger re-tracks a tracked table after ALTER TABLE'
                USING HINT = 'after changing a tracked table''s key or columns, run SELECT audit.track(...) again with its options (see audit.tracked), or run sql/audit_log.sql as a superuser';
        END IF;
    END IF;
END
$$;

-- What is tracked, with its options, by name.
CREATE OR REPLACE VIEW audit.tracked AS
SELECT format('%I.%I', n.nspname, c.relname) AS "table",
       n.nspname::text AS schema_name,
       c.relname::text AS table_name,
       t.key_cols AS "key",
       t.only_cols AS "only",
       t.ignore_cols AS "ignore",
       t.redact_cols AS redact,
       t.when_expr AS "when",
       t.tracked_at,
       t.tracked_by,
       t.bulk
FROM audit.tracked_tables t
JOIN pg_class c ON c.oid = t.tbl
JOIN pg_namespace n ON n.oid = c.relnamespace;

-- Tamper resistance, as for users_audit: only the owner writes the log and the options. Every
-- privilege anyone was ever given on them, but SELECT on a table as a whole, is revoked (a
-- re-install repairs a loosened table); on a partition and DEFAULT every privilege, SELECT too
-- (read the log through audit.log); and the identity sequence of the log's ids.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOR t IN SELECT unnest(ARRAY['audit.log', 'audit.tracked_tables', 'audit.pauses',
                                 'audit.log_settings', 'audit.log_exports']) LOOP
        PERFORM audit.revoke_grants(t::regclass, true);
    END LOOP;
    FOR t IN SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'audit.log'::regclass LOOP
        PERFORM audit.revoke_grants(t::regclass, false);
    END LOOP;
    PERFORM audit.revoke_grants(pg_get_serial_sequence('audit.log', 'id')::regclass, false);
END
$$;
REVOKE ALL ON FUNCTION audit.revoke_grants(REGCLASS, BOOLEAN) FROM PUBLIC;
REVOKE ALL ON audit.tracked FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.log_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.log_switch(TEXT, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.changed_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.pause(TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.resume() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.create_log_partition(DATE) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.log_partitions() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.retain(INTERVAL) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.retention_plan(INTERVAL) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.log_storage() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.define_changed_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.log_fingerprint(REGCLASS, DATE) FROM PUBLIC;
GRANT USAGE ON SCHEMA audit TO audit_admin;
GRANT EXECUTE ON FUNCTION audit.pause(TEXT), audit.resume() TO audit_admin;
REVOKE ALL ON FUNCTION audit.track(REGCLASS, TEXT[], TEXT[], TEXT[], TEXT, BOOLEAN) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.untrack(REGCLASS) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.drop_triggers(REGCLASS) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.create_trigger(REGCLASS, TEXT, TEXT, TEXT, TEXT, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.create_stmt_trigger(REGCLASS, TEXT, TEXT, TEXT, TEXT, TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.log_changes() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.retrack_altered() FROM PUBLIC;

-- The live stream: inserts only, like users_audit, published as the root: the stream sees one
-- table, audit.log, whichever partition a row is in.
DO $$
BEGIN
    IF NOT (SELECT pubviaroot FROM pg_publication WHERE pubname = 'users_audit_pub') THEN
        ALTER PUBLICATION users_audit_pub SET (publish_via_partition_root = true);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                   WHERE p.pubname = 'users_audit_pub' AND r.prrelid = 'audit.log'::regclass) THEN
        ALTER PUBLICATION users_audit_pub ADD TABLE audit.log;
    END IF;
END
$$;

-- The consumer's role reads the log (for verify, later), nothing more.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_tail') THEN
        GRANT USAGE ON SCHEMA audit TO audit_tail;
        GRANT SELECT ON audit.log TO audit_tail;
    END IF;
END
$$;

COMMIT;

-- The nightly export of the log, like users_audit's (sql/install.sql): the rows of a day, a file
-- per day, byte-identical to COPY. In its own transaction, after the log's: a re-run replaces it.
BEGIN;

-- audit.log_rows(day): the log's rows whose changed_at falls on day, as users_audit_rows(day) is
-- for users_audit. Read-only and SECURITY INVOKER (the caller needs SELECT on audit.log); its body
-- names the log by schema and it has no SET clause, so that PostgreSQL inlines it: a range scan
-- on log_changed_at_idx streamed straight to COPY. `audit-tail verify` reads it as audit_tail.
CREATE OR REPLACE FUNCTION audit.log_rows(day DATE) RETURNS SETOF audit.log
LANGUAGE sql STABLE SECURITY INVOKER
AS $$ SELECT * FROM audit.log WHERE changed_at >= $1 AND changed_at < $1 + 1 $$;

-- audit.export_log(day): the rows of audit.log_rows(day), ordered by id, written by the server to
-- the export directory of install.sql (audit_settings.export_dir) with a header line; returns the
-- path. The file's name follows the users_audit export's (audit_settings.export_name), with
-- audit_log_export in place of users_audit_export: audit_log_export_YYYYMMDD.csv by default,
-- audit_log_export_<database>_YYYYMMDD.csv when install.sql gave this database its own name, and
-- <export_name>_audit_log_YYYYMMDD.csv for a name chosen with audit.export_name, so that two
-- databases sharing a directory never overwrite each other's log export either. The bytes equal
--     COPY (SELECT * FROM audit.log WHERE changed_at >= day AND changed_at < day + 1 ORDER BY id)
--     TO STDOUT WITH (FORMAT csv, HEADER)
-- in a session with the default settings, whatever the caller's DateStyle, IntervalStyle or
-- client_encoding, as for export_audit_data. audit_settings is in install.sql's schema, found
-- here at install time and named in the body. It records the rows' fingerprint in
-- audit.log_exports (for retention), holding the day's partition in SHARE mode meanwhile, and
-- refuses to overwrite the file of a day whose partition retention dropped.
-- (Inside format() below, a literal % is written %%.)
DO $do$
DECLARE
    settings REGCLASS := to_regclass(format('%I.audit_settings', current_schema()));
BEGIN
    IF settings IS NULL THEN
        RAISE EXCEPTION 'audit-tail: table audit_settings does not exist in schema %', current_schema()
            USING HINT = 'run sql/audit_log.sql with the search_path that sql/install.sql was run with, right after it: psql -v ON_ERROR_STOP=1 -f sql/install.sql -f sql/audit_log.sql';
    END IF;
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION audit.export_log(day DATE) RETURNS TEXT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, MDY'
SET intervalstyle = 'postgres'
SET extra_float_digits = 3
AS $body$
DECLARE
    path TEXT;
    n BIGINT;
    holder REGCLASS;
    done RECORD;
    f RECORD;
    on_disk BOOLEAN;
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'audit.export_log: day must not be NULL'
            USING HINT = 'pass the date to export, for example audit.export_log(audit.log_today() - 1)';
    END IF;
    SELECT rtrim(export_dir, '/') || '/'
           || CASE WHEN export_name ~ '^users_audit_export(_|$)'
                   THEN regexp_replace(export_name, '^users_audit_export', 'audit_log_export')
                   ELSE export_name || '_audit_log' END
           || '_' || to_char(day, 'YYYYMMDD') || '.csv'
    INTO STRICT path
    FROM %s;
    -- Retention dropped this day after exporting it to this file: the file holds rows that are
    -- nowhere else now. Never overwrite it (with the rows written since, or none).
    SELECT x.* INTO done FROM audit.log_exports x WHERE x.day = export_log.day AND x.dropped_at IS NOT NULL;
    IF FOUND AND done.path = path THEN
        BEGIN
            on_disk := (pg_stat_file(path, true)).size IS NOT NULL;
        EXCEPTION WHEN insufficient_privilege THEN
            on_disk := true;  -- cannot tell: keep the file safe
        END;
        IF on_disk THEN
            RAISE EXCEPTION 'audit.export_log: will not overwrite %%: it holds the %%s rows of %%s that retention dropped from the database at %%s',
                path, done.rows, day, done.dropped_at
                USING HINT = 'move the file aside (keep it: those rows are nowhere else), then run audit.export_log again to export the rows of the day written since';
        END IF;
    END IF;
    -- The rows of the day are in its partition, or in DEFAULT when it has none. Writes into them
    -- wait until the fingerprint below is taken, so that it describes exactly what COPY wrote.
    holder := coalesce((SELECT d.partition FROM audit.log_days() d WHERE d.day = export_log.day),
                       'audit.log_default'::regclass);
    EXECUTE format('LOCK TABLE %%s IN SHARE MODE', holder);
    EXECUTE format(
        'COPY (SELECT * FROM audit.log_rows(%%L::date) ORDER BY id) TO %%L WITH (FORMAT csv, HEADER, ENCODING %%L)',
        day, path, 'UTF8');
    GET DIAGNOSTICS n = ROW_COUNT;
    SELECT * INTO f FROM audit.log_fingerprint('audit.log', day);
    IF f.rows <> n THEN
        RAISE EXCEPTION 'audit.export_log: the rows of %%s changed while they were exported (%%s written, %%s now)', day, n, f.rows
            USING HINT = 'run it again';
    END IF;
    -- Recorded once every row is written: what retention (audit.retain) trusts.
    INSERT INTO audit.log_exports AS e (day, path, rows, min_id, max_id, id_sum, id_hash, dropped_at)
    VALUES (day, path, n, f.min_id, f.max_id, f.id_sum, f.id_hash, NULL)
    ON CONFLICT ON CONSTRAINT log_exports_pkey DO UPDATE
        SET path = EXCLUDED.path, rows = EXCLUDED.rows, exported_at = EXCLUDED.exported_at,
            min_id = EXCLUDED.min_id, max_id = EXCLUDED.max_id, id_sum = EXCLUDED.id_sum,
            id_hash = EXCLUDED.id_hash, dropped_at = NULL;
    RETURN path;
END
$body$
$f$, format('%I.audit_settings', current_schema()));
END
$do$;

REVOKE ALL ON FUNCTION audit.log_rows(DATE) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.export_log(DATE) FROM PUBLIC;

-- The consumer's role reads the day's rows, as it does users_audit_rows(day), and what is tracked
-- (for `audit-tail status`); it gets no EXECUTE on export_log, which writes on the server's disk.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_tail') THEN
        GRANT USAGE ON SCHEMA audit TO audit_tail;
        GRANT SELECT ON audit.log TO audit_tail;
        GRANT EXECUTE ON FUNCTION audit.log_rows(DATE) TO audit_tail;
        GRANT SELECT ON audit.tracked TO audit_tail;
        GRANT EXECUTE ON FUNCTION audit.log_storage() TO audit_tail;
    END IF;
END
$$;

-- audit.nightly_log(day): the log's part of the one nightly job (install.sql): the partitions
-- of the days ahead (and of days left in DEFAULT), the export of day, then retention when
-- audit.log_settings.retention is set. Returns the export's path.
-- The upkeep (partitions, retention) runs in sub-blocks of its own: its failure is a WARNING in
-- the job's log and never rolls back the night's export; only a failed export fails the run.
CREATE OR REPLACE FUNCTION audit.nightly_log(day DATE) RETURNS TEXT
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
    path TEXT;
    keep INTERVAL := (SELECT retention FROM audit.log_settings);
    msg TEXT;
    hint TEXT;
BEGIN
    BEGIN
        PERFORM audit.log_partitions();
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
        RAISE WARNING 'audit-tail: the nightly upkeep of audit.log''s partitions failed, the export of % goes on: %', day, msg
            USING HINT = coalesce(nullif(hint, '') || '. ', '')
                         || 'Writes never fail meanwhile (a day without a partition is written into audit.log_default); run SELECT audit.log_partitions() as the log''s owner to retry';
    END;
    path := audit.export_log(day);
    IF keep IS NOT NULL THEN
        BEGIN
            PERFORM audit.retain(keep);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            RAISE WARNING 'audit-tail: retention of audit.log failed, the export of % is kept: %', day, msg
                USING HINT = format('nothing was dropped; run SELECT audit.retain(%L) as the log''s owner to retry', keep);
        END;
    END IF;
    RETURN path;
END
$$;
REVOKE ALL ON FUNCTION audit.nightly_log(DATE) FROM PUBLIC;

-- One nightly job per database exports both tables: install.sql's job (export-daily-audit-data
-- in the cron database, export-daily-audit-data-<database> elsewhere; see install.sql for why),
-- whose command install.sql extends, once this file has been run, with audit.nightly_log:
--     SELECT <schema>.export_audit_data(current_date - 1), audit.nightly_log(audit.log_today() - 1)
-- (users_audit's day in the job's session TimeZone, as before; the log's in its own zone).
-- One statement, one transaction: if the log's export fails, the run is marked failed in
-- cron.job_run_details and the day is not recorded as exported (users_audit's file is written
-- first, byte-identical as before); a failure of the upkeep is a WARNING (see nightly_log). The log's own job of an earlier install
-- (export-daily-audit-log[-<database>]) is removed. Installed in the cron database it upserts the
-- job, keeping its schedule; anywhere else it says in a NOTICE the statement to run there.
DO $$
DECLARE
    cron_db TEXT := current_setting('cron.database_name', true);
    job_name TEXT := 'export-daily-audit-data';
    old_job TEXT := 'export-daily-audit-log';
    job_command TEXT := format('SELECT %I.export_audit_data(current_date - 1), audit.nightly_log(audit.log_today() - 1)',
                               current_schema());
    old RECORD;
BEGIN
    IF cron_db IS NULL OR NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_cron') THEN
        RAISE WARNING 'pg_cron is not loaded on this server: the nightly export of audit.log is not scheduled'
            USING HINT = 'see the warning of install.sql; once pg_cron is loaded, run sql/install.sql and sql/audit_log.sql again';
    ELSIF current_database() <> cron_db THEN
        job_name := job_name || '-' || current_database();
        old_job := old_job || '-' || current_database();
        RAISE NOTICE 'pg_cron keeps its jobs in database "%", not here: to schedule the one nightly job of this database, which exports users_audit and audit.log, run in "%": %',
            cron_db, cron_db,
            format('SELECT cron.schedule_in_database(%L, %L, %L, %L);',
                   job_name, '0 3 * * *', job_command, current_database())
            USING DETAIL = format('pg_cron must be created in "%s" first, once: CREATE EXTENSION IF NOT EXISTS pg_cron; '
                                  'This statement replaces the one sql/install.sql gave: one job exports both users_audit and audit.log.', cron_db),
                  HINT = format('only after an upgrade from a version that scheduled the log''s own job %s: remove that job there with SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %L',
                                old_job, old_job);
    ELSE
        CREATE EXTENSION IF NOT EXISTS pg_cron;
        FOR old IN SELECT jobid, jobname, command FROM cron.job
                   WHERE jobname = old_job AND database = current_database() LOOP
            PERFORM cron.unschedule(old.jobid);
            RAISE NOTICE 'audit-tail: unscheduled pg_cron job % (%): the one nightly job % exports audit.log now',
                old.jobname, old.command, job_name;
        END LOOP;
        PERFORM cron.schedule(job_name,
                              coalesce((SELECT schedule FROM cron.job WHERE jobname = job_name
                                        AND username = current_user), '0 3 * * *'),
                              job_command);
    END IF;
END
$$;

COMMIT;

-- history and log --dsn (docs/history.md): one record's rows found through indexes, not a scan of
-- the log. A record's rows by table and key (TRUNCATEs, whose key is NULL, through the same
-- index), its rows under an older key by old_key (only UPDATEs that changed the key have one, so
-- the index is partial and small), and one user's rows of users_audit. Plain CREATE INDEX on the
-- parent, so the same statements hold when audit.log is partitioned by day.
CREATE INDEX IF NOT EXISTS log_record_idx ON audit.log (schema_name, table_name, key);
CREATE INDEX IF NOT EXISTS log_old_key_idx ON audit.log (schema_name, table_name, old_key)
    WHERE old_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS users_audit_user_id_idx ON users_audit (user_id);

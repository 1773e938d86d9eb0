-- audit-tail: the audit trail, its nightly export and its publication.
--
-- Install (or upgrade) into the current database, into the first schema of its search_path:
--
--     psql -v ON_ERROR_STOP=1 -f sql/install.sql
--
-- Running it again is safe: existing users, audit rows, settings and the cron job are kept.
--
-- The export directory (on the database server's disk, default /tmp) is chosen at install time
-- through the setting audit.export_dir, without editing this file:
--
--     psql -v ON_ERROR_STOP=1 -c "SET audit.export_dir = '/var/lib/audit'" -f sql/install.sql
--     PGOPTIONS='-c audit.export_dir=/var/lib/audit' psql -v ON_ERROR_STOP=1 -f sql/install.sql
--
-- A re-install without the setting keeps the directory chosen before.
--
-- The rows of users and users_audit, in this column order, are the CSV contract shared by the
-- nightly export and the live stream of audit-tail. Do not reorder them.

BEGIN;

-- Every function below is SECURITY DEFINER or runs from pg_cron, so each pins its search_path to
-- the install schema (pg_catalog is searched first implicitly, pg_temp last explicitly) through
-- SET search_path FROM CURRENT.
DO $$
BEGIN
    IF pg_catalog.current_schema() IS NULL THEN
        RAISE EXCEPTION 'audit-tail: no schema to install into'
            USING HINT = 'set search_path to an existing schema, for example: SET search_path = public';
    END IF;
    PERFORM pg_catalog.set_config('search_path',
        pg_catalog.format('%I, pg_temp', pg_catalog.current_schema()), true);
END
$$;

CREATE TABLE IF NOT EXISTS users (
    id         SERIAL PRIMARY KEY,
    name       TEXT,
    email      TEXT,
    role       TEXT,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS users_audit (
    id            SERIAL PRIMARY KEY,
    user_id       INTEGER,
    changed_at    TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    changed_by    TEXT,
    field_changed TEXT,
    old_value     TEXT,
    new_value     TEXT
);

-- "The rows of day D" is changed_at >= D AND changed_at < D + 1: a range scan on this index.
CREATE INDEX IF NOT EXISTS users_audit_changed_at_idx ON users_audit (changed_at);

-- One row of settings chosen at install time.
CREATE TABLE IF NOT EXISTS audit_settings (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    export_dir TEXT NOT NULL
        CONSTRAINT export_dir_is_absolute CHECK (export_dir ~ '^/' AND export_dir !~ '(^|/)\.\.(/|$)')
);

INSERT INTO audit_settings (export_dir)
VALUES (coalesce(nullif(current_setting('audit.export_dir', true), ''), '/tmp'))
ON CONFLICT (singleton) DO UPDATE
    SET export_dir = EXCLUDED.export_dir
    WHERE nullif(current_setting('audit.export_dir', true), '') IS NOT NULL;

-- One audit row per changed field, in the order name, email, role. IS DISTINCT FROM makes NULL and
-- '' different values. The actor is the transaction's audit.actor when the application set it
-- (SET LOCAL audit.actor = 'alice@example.com'), else the login role.
--
-- SECURITY DEFINER: the trigger writes users_audit as its owner, so application roles need no
-- privilege on users_audit at all and cannot forge or erase its rows.
CREATE OR REPLACE FUNCTION log_user_changes() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    actor TEXT := coalesce(nullif(current_setting('audit.actor', true), ''), session_user);
BEGIN
    IF NEW.name IS DISTINCT FROM OLD.name THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (NEW.id, actor, 'name', OLD.name, NEW.name);
    END IF;
    IF NEW.email IS DISTINCT FROM OLD.email THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (NEW.id, actor, 'email', OLD.email, NEW.email);
    END IF;
    IF NEW.role IS DISTINCT FROM OLD.role THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (NEW.id, actor, 'role', OLD.role, NEW.role);
    END IF;
    RETURN NULL;
END
$$;

-- The WHEN clause keeps no-op updates and updates of other columns from calling the function.
CREATE OR REPLACE TRIGGER users_audit_trigger
    AFTER UPDATE ON users
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name
          OR OLD.email IS DISTINCT FROM NEW.email
          OR OLD.role IS DISTINCT FROM NEW.role)
    EXECUTE FUNCTION log_user_changes();

-- Tamper resistance: only the owner writes users_audit. Revoke write privileges that anyone was
-- ever granted, not only PUBLIC's, so a re-install also repairs a loosened table. SELECT grants,
-- such as the consumer role's, are kept.
DO $$
DECLARE
    grantee_name TEXT;
BEGIN
    REVOKE ALL ON users_audit FROM PUBLIC;
    REVOKE ALL ON audit_settings FROM PUBLIC;
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC',
                   pg_get_serial_sequence('users_audit', 'id'));
    FOR grantee_name IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'users_audit'::regclass
          AND a.grantee <> 0
          AND a.grantee <> c.relowner
          AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON users_audit FROM %s', grantee_name);
    END LOOP;
END
$$;

-- export_audit_data(day): the rows whose changed_at falls on day, ordered by id, written by the
-- server to <export_dir>/users_audit_export_YYYYMMDD.csv with a header line; returns that path.
-- The bytes equal
--     COPY (SELECT * FROM users_audit WHERE changed_at >= day AND changed_at < day + 1 ORDER BY id)
--     TO STDOUT WITH (FORMAT csv, HEADER)
-- in a session with the default settings, whatever the caller's DateStyle, IntervalStyle or
-- client_encoding: the function pins them. The file name is derived from the date only, so a
-- caller cannot make it write anywhere but the configured directory.
CREATE OR REPLACE FUNCTION export_audit_data(day DATE) RETURNS TEXT
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET datestyle = 'ISO, MDY'
SET intervalstyle = 'postgres'
SET extra_float_digits = 3
AS $$
DECLARE
    path TEXT;
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'export_audit_data: day must not be NULL'
            USING HINT = 'pass the date to export, for example export_audit_data(current_date - 1)';
    END IF;
    SELECT rtrim(export_dir, '/') || '/users_audit_export_' || to_char(day, 'YYYYMMDD') || '.csv'
    INTO STRICT path
    FROM audit_settings;
    EXECUTE format(
        'COPY (SELECT * FROM users_audit WHERE changed_at >= %L::date AND changed_at < %L::date ORDER BY id) '
        'TO %L WITH (FORMAT csv, HEADER, ENCODING %L)',
        day, day + 1, path, 'UTF8');
    RETURN path;
END
$$;

-- The reference name: exports the current date (in the session's TimeZone).
CREATE OR REPLACE FUNCTION export_todays_audit_data() RETURNS TEXT
LANGUAGE sql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$ SELECT export_audit_data(current_date) $$;

REVOKE ALL ON FUNCTION export_audit_data(DATE) FROM PUBLIC;
REVOKE ALL ON FUNCTION export_todays_audit_data() FROM PUBLIC;
REVOKE ALL ON FUNCTION log_user_changes() FROM PUBLIC;

-- The live stream: inserts only, so that deleting old audit rows for retention is not an event.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'users_audit_pub') THEN
        CREATE PUBLICATION users_audit_pub FOR TABLE users_audit WITH (publish = 'insert');
    ELSE
        ALTER PUBLICATION users_audit_pub SET (publish = 'insert');
        IF NOT EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                       WHERE p.pubname = 'users_audit_pub' AND r.prrelid = 'users_audit'::regclass) THEN
            ALTER PUBLICATION users_audit_pub ADD TABLE users_audit;
        END IF;
    END IF;
END
$$;

-- The consumer's least-privilege role: LOGIN REPLICATION and SELECT on users_audit, nothing more.
-- It is created without a password (only a superuser may create a REPLICATION role); give it one
-- with ALTER ROLE audit_tail PASSWORD '...' and allow it in pg_hba.conf for replication and for
-- this database. A role of that name that already exists is left as it is and only granted SELECT.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_tail') THEN
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            BEGIN
                CREATE ROLE audit_tail LOGIN REPLICATION;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by an install into another database
            END;
            RAISE NOTICE 'created role audit_tail (LOGIN REPLICATION) for the consumer; give it a password: ALTER ROLE audit_tail PASSWORD ''...''';
        ELSE
            RAISE NOTICE 'role audit_tail for the consumer was not created: only a superuser may create a REPLICATION role'
                USING HINT = 'as a superuser: CREATE ROLE audit_tail LOGIN REPLICATION; GRANT SELECT ON users_audit TO audit_tail';
        END IF;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_tail') THEN
        GRANT SELECT ON users_audit TO audit_tail;
    END IF;
END
$$;

-- The nightly export, scheduled with pg_cron at 03:00. At 03:00 the day has barely begun, so the
-- job exports the previous, complete day: current_date - 1. pg_cron 1.4 (Debian bookworm) reads
-- schedules in GMT (cron.timezone exists only from 1.5), while current_date and changed_at follow
-- the server's TimeZone: on a server whose TimeZone is not UTC, 03:00 GMT is another local hour.
--
-- pg_cron keeps its jobs in one database, cron.database_name (default postgres). Installed there,
-- this creates the extension and upserts the job by name. Installed anywhere else, it installs the
-- rest and says in a NOTICE the one statement to run in the cron database.
DO $$
DECLARE
    cron_db TEXT := current_setting('cron.database_name', true);
    job_command TEXT := format('SELECT %I.export_audit_data(current_date - 1)', current_schema());
BEGIN
    IF NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_cron') THEN
        RAISE WARNING 'pg_cron is not installed on this server: the nightly export is not scheduled'
            USING HINT = 'install it (Debian: apt-get install postgresql-15-cron), set shared_preload_libraries = ''pg_cron'', restart the server and run this script again';
    ELSIF cron_db IS NULL THEN
        RAISE WARNING 'pg_cron is installed but not loaded: the nightly export is not scheduled'
            USING HINT = 'set shared_preload_libraries = ''pg_cron'' in postgresql.conf, restart the server and run this script again';
    ELSIF current_database() <> cron_db THEN
        RAISE NOTICE 'pg_cron keeps its jobs in database "%", not here: to schedule the nightly export of this database, run in "%": %',
            cron_db, cron_db,
            format('SELECT cron.schedule_in_database(%L, %L, %L, %L);',
                   'export-daily-audit-data', '0 3 * * *', job_command, current_database())
            USING HINT = 'pg_cron 1.4 keeps the database of a job that already has this name: unschedule it first with SELECT cron.unschedule(''export-daily-audit-data'')';
    ELSE
        CREATE EXTENSION IF NOT EXISTS pg_cron;
        PERFORM cron.schedule('export-daily-audit-data', '0 3 * * *', job_command);
        IF EXISTS (SELECT FROM cron.job WHERE jobname = 'export-daily-audit-data'
                   AND username = current_user AND database <> current_database()) THEN
            RAISE WARNING 'the job export-daily-audit-data already exports another database and pg_cron 1.4 keeps it so'
                USING HINT = 'to export this database instead: SELECT cron.unschedule(''export-daily-audit-data''), then run this script again';
        END IF;
    END IF;
END
$$;

COMMIT;

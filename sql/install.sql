-- audit-tail: the audit trail, its nightly export and its publication.
--
-- Install (or upgrade) into the current database, into the first schema of its search_path:
--
--     psql -v ON_ERROR_STOP=1 -f sql/install.sql
--
-- Running it again is safe: existing users, audit rows, settings and the cron job are kept. Over
-- existing tables it fits what is there (an application's users with bigint ids or citext
-- e-mails; the tutorial's install, upgraded in place) or refuses before changing anything, naming
-- the table, the column, the expected and the found type. Each change to what was there is said
-- in a NOTICE.
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

-- Fit what is there or refuse before changing anything. An application's own users table may
-- have other columns and types (bigint ids, citext e-mails): the trigger needs id (integer or
-- bigint) and name, email, role of any type (their text is what is audited). An existing
-- users_audit must be exactly the table below, in this column order: it is the CSV contract, and a
-- table the trigger cannot write would make every UPDATE of users fail.
DO $$
DECLARE
    users_rel REGCLASS := to_regclass(format('%I.users', current_schema()));
    audit_rel REGCLASS := to_regclass(format('%I.users_audit', current_schema()));
    want_names TEXT[] := ARRAY['id', 'user_id', 'changed_at', 'changed_by', 'field_changed',
                               'old_value', 'new_value'];
    want_types TEXT[] := ARRAY['integer or bigint', 'integer or bigint', 'timestamp without time zone',
                               'text', 'text', 'text', 'text'];
    col TEXT;
    id_type TEXT;
    names TEXT[];
    types TEXT[];
    not_null BOOLEAN[];
    has_default BOOLEAN[];
    want TEXT;
    got TEXT;
BEGIN
    IF users_rel IS NOT NULL THEN
        FOREACH col IN ARRAY ARRAY['id', 'name', 'email', 'role'] LOOP
            IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = users_rel AND attname = col
                           AND attnum > 0 AND NOT attisdropped) THEN
                RAISE EXCEPTION 'audit-tail cannot use table users in schema %: it should have a column %, found none',
                    current_schema(), col
                    USING DETAIL = 'the trigger audits users.name, users.email and users.role (of any type: their text is recorded) under users.id (integer or bigint). Nothing was changed.',
                          HINT = 'install into another schema (SET search_path = ...), or add the column';
            END IF;
        END LOOP;
        SELECT format_type(atttypid, atttypmod) INTO id_type
        FROM pg_attribute WHERE attrelid = users_rel AND attname = 'id';
        IF id_type NOT IN ('integer', 'bigint') THEN
            RAISE EXCEPTION 'audit-tail cannot use table users in schema %: it should have id integer or bigint, found id %',
                current_schema(), id_type
                USING DETAIL = 'users_audit.user_id records users.id. Nothing was changed.';
        END IF;
    END IF;
    IF audit_rel IS NOT NULL THEN
        SELECT array_agg(attname::text ORDER BY attnum),
               array_agg(format_type(atttypid, atttypmod) ORDER BY attnum),
               array_agg(attnotnull ORDER BY attnum),
               array_agg(atthasdef OR attidentity <> '' ORDER BY attnum)
        INTO names, types, not_null, has_default
        FROM pg_attribute WHERE attrelid = audit_rel AND attnum > 0 AND NOT attisdropped;
        FOR i IN 1 .. greatest(cardinality(want_names), cardinality(names)) LOOP
            want := coalesce(want_names[i] || ' ' || want_types[i], 'absent (the export writes every column)');
            got := coalesce(names[i] || ' ' || types[i], 'none');
            IF names[i] IS DISTINCT FROM want_names[i]
               OR NOT (types[i] = want_types[i] OR (i <= 2 AND types[i] IN ('integer', 'bigint'))) THEN
                NULL;  -- reported below
            ELSIF names[i] IN ('id', 'changed_at') AND NOT has_default[i] THEN
                want := want || ' with a default';
                got := got || ' without a default';
            ELSIF names[i] IN ('old_value', 'new_value') AND not_null[i] THEN
                want := want || ' that allows NULL';
                got := got || ' NOT NULL';
            ELSE
                CONTINUE;
            END IF;
            RAISE EXCEPTION 'audit-tail cannot use table users_audit in schema %: column % should be %, found %',
                current_schema(), i, want, got
                USING DETAIL = 'users_audit must be (id integer, user_id integer or bigint, changed_at timestamp without time zone, changed_by text, field_changed text, old_value text, new_value text), in this column order: the column order is the CSV contract of the export and the stream. Nothing was changed.',
                      HINT = 'keep the rows under another name and let install.sql create users_audit: ALTER TABLE users_audit RENAME TO users_audit_old; then run the script again and copy the rows over';
        END LOOP;
    END IF;
END
$$;

-- An earlier install (the tutorial's, say) is upgraded in place: its rows stay, its functions,
-- trigger and job are replaced, and each replacement is said in a NOTICE.
DO $$
DECLARE
    fn REGPROCEDURE;
    users_rel REGCLASS := to_regclass(format('%I.users', current_schema()));
    trig RECORD;
BEGIN
    FOREACH fn IN ARRAY ARRAY[to_regprocedure(format('%I.export_todays_audit_data()', current_schema())),
                              to_regprocedure(format('%I.export_audit_data(date)', current_schema()))] LOOP
        CONTINUE WHEN fn IS NULL OR (SELECT prorettype FROM pg_proc WHERE oid = fn) = 'text'::regtype;
        RAISE NOTICE 'audit-tail: % returned % (an earlier version, such as the tutorial''s): replaced by audit-tail''s, which writes the day''s rows to the export directory and returns the file''s path',
            fn, format_type((SELECT prorettype FROM pg_proc WHERE oid = fn), NULL);
        EXECUTE format('DROP FUNCTION %s', fn);
    END LOOP;
    fn := to_regprocedure(format('%I.log_user_changes()', current_schema()));
    IF fn IS NOT NULL AND NOT (SELECT prosecdef FROM pg_proc WHERE oid = fn) THEN
        RAISE NOTICE 'audit-tail: log_user_changes() (an earlier version, such as the tutorial''s) is replaced by audit-tail''s: it records NEW.id, the actor from audit.actor, and compares the values as the text it records';
    END IF;
    IF fn IS NOT NULL AND users_rel IS NOT NULL THEN
        FOR trig IN SELECT tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger
                    WHERE tgrelid = users_rel AND tgfoid = fn AND NOT tgisinternal LOOP
            IF trig.tgname <> 'users_audit_trigger' THEN
                RAISE NOTICE 'audit-tail: dropped trigger % on users (%): users_audit_trigger replaces it, and with both every change would be audited twice',
                    trig.tgname, trig.def;
                EXECUTE format('DROP TRIGGER %I ON users', trig.tgname);
            ELSIF trig.def !~ 'AFTER UPDATE' OR trig.def !~ 'WHEN' THEN
                RAISE NOTICE 'audit-tail: trigger users_audit_trigger (%) is replaced by audit-tail''s: after each update that changes name, email or role',
                    trig.def;
            END IF;
        END LOOP;
    END IF;
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

-- users_audit.user_id holds users.id: bigint when the application's ids are bigint. Widening an
-- integer column keeps every value and its text in the CSV; it rewrites the table under an
-- exclusive lock, so on a large table run the install at a quiet time.
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'id') = 'bigint'::regtype
       AND (SELECT atttypid FROM pg_attribute WHERE attrelid = 'users_audit'::regclass AND attname = 'user_id') = 'integer'::regtype THEN
        ALTER TABLE users_audit ALTER COLUMN user_id TYPE bigint;
        RAISE NOTICE 'audit-tail: users_audit.user_id widened from integer to bigint, since users.id is bigint';
    END IF;
END
$$;

-- "The rows of day D" is changed_at >= D AND changed_at < D + 1: a range scan on this index.
CREATE INDEX IF NOT EXISTS users_audit_changed_at_idx ON users_audit (changed_at);

-- One row of settings chosen at install time.
CREATE TABLE IF NOT EXISTS audit_settings (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    export_dir TEXT NOT NULL
        CONSTRAINT export_dir_is_absolute CHECK (export_dir ~ '^/' AND export_dir !~ '(^|/)\.\.(/|$)')
);

-- export_name: the export file is <export_dir>/<export_name>_YYYYMMDD.csv (see below).
ALTER TABLE audit_settings ADD COLUMN IF NOT EXISTS export_name TEXT
    CONSTRAINT export_name_is_a_file_name CHECK (export_name ~ '^[[:alnum:]_-]+$');

-- The export directory, and the export file's name: chosen at install time, kept by a re-install
-- that does not choose again. The name is set with the setting audit.export_name; otherwise the
-- first database to install into an export directory keeps the tutorial's name,
-- users_audit_export_YYYYMMDD.csv, and claims it in <export_dir>/users_audit_export.owner (the
-- server's system identifier and the database). A database that finds another database's claim
-- there gets its name in its files, users_audit_export_<database>_YYYYMMDD.csv, so that two
-- databases (or two servers) never overwrite each other's export. A claim of a database that no
-- longer exists on this server is taken over. The name is chosen again when the directory changes.
DO $$
DECLARE
    chosen TEXT := nullif(current_setting('audit.export_name', true), '');
    old_dir TEXT;
    old_name TEXT;
    dir TEXT;
    claim_file TEXT;
    claim TEXT;
    system_id TEXT;
BEGIN
    SELECT export_dir, export_name INTO old_dir, old_name FROM audit_settings;
    INSERT INTO audit_settings (export_dir)
    VALUES (coalesce(nullif(current_setting('audit.export_dir', true), ''), '/tmp'))
    ON CONFLICT (singleton) DO UPDATE
        SET export_dir = EXCLUDED.export_dir
        WHERE nullif(current_setting('audit.export_dir', true), '') IS NOT NULL;
    SELECT export_dir INTO STRICT dir FROM audit_settings;
    IF chosen IS NULL AND old_name IS NOT NULL AND old_dir = dir THEN
        RETURN;
    END IF;
    IF chosen IS NULL THEN
        claim_file := rtrim(dir, '/') || '/users_audit_export.owner';
        chosen := 'users_audit_export';
        BEGIN
            system_id := (SELECT system_identifier FROM pg_control_system())::text;
            claim := rtrim(pg_read_file(claim_file, 0, 1000, true), E'\n');
            IF claim IS NOT NULL AND claim <> system_id || ' ' || current_database()
               AND NOT (split_part(claim, ' ', 1) = system_id AND NOT EXISTS (
                            SELECT FROM pg_database WHERE datname = substr(claim, length(system_id) + 2))) THEN
                chosen := 'users_audit_export_' || regexp_replace(current_database(), '[^[:alnum:]_-]+', '_', 'g');
                RAISE NOTICE 'audit-tail: database % (server %) already exports to %: this database''s export files are named %_YYYYMMDD.csv',
                    substr(claim, length(split_part(claim, ' ', 1)) + 2), split_part(claim, ' ', 1), dir, chosen
                    USING HINT = 'to choose the name yourself, run the script again with SET audit.export_name = ''...''';
            ELSIF claim IS DISTINCT FROM system_id || ' ' || current_database() THEN
                EXECUTE format('COPY (SELECT %L) TO %L', system_id || ' ' || current_database(), claim_file);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'audit-tail: could not check whether another database exports to % (%): the export files are named users_audit_export_YYYYMMDD.csv', dir, SQLERRM
                USING HINT = 'if another database exports to the same directory, run the script again with SET audit.export_name = ''...''';
        END;
    END IF;
    UPDATE audit_settings SET export_name = chosen;
END
$$;

-- One audit row per changed field, in the order name, email, role. The values are compared as the
-- text that is recorded, not with the column type's own equality (citext would hide a case-only
-- change). IS DISTINCT FROM makes NULL and '' different values. The actor is the transaction's audit.actor when the application set it
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
    IF NEW.name::text IS DISTINCT FROM OLD.name::text THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (NEW.id, actor, 'name', OLD.name::text, NEW.name::text);
    END IF;
    IF NEW.email::text IS DISTINCT FROM OLD.email::text THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (NEW.id, actor, 'email', OLD.email::text, NEW.email::text);
    END IF;
    IF NEW.role::text IS DISTINCT FROM OLD.role::text THEN
        INSERT INTO users_audit (user_id, changed_by, field_changed, old_value, new_value)
        VALUES (NEW.id, actor, 'role', OLD.role::text, NEW.role::text);
    END IF;
    RETURN NULL;
END
$$;

-- The WHEN clause keeps no-op updates and updates of other columns from calling the function.
CREATE OR REPLACE TRIGGER users_audit_trigger
    AFTER UPDATE ON users
    FOR EACH ROW
    WHEN (OLD.name::text IS DISTINCT FROM NEW.name::text
          OR OLD.email::text IS DISTINCT FROM NEW.email::text
          OR OLD.role::text IS DISTINCT FROM NEW.role::text)
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

-- users_audit_rows(day): the rows whose changed_at falls on day, with the table's columns as they
-- are now. Read-only and SECURITY INVOKER: the caller needs SELECT on users_audit, and gets
-- nothing more from it. export_audit_data writes these rows to the server's disk, and
-- `audit-tail verify` reads them over COPY TO STDOUT as the consumer role, so both see one
-- definition of a day. A SQL function is planned at each call, so `*` follows columns added
-- later. It names its table with the install schema instead of pinning search_path (SET), so
-- that PostgreSQL inlines it: the day is then an index range scan streamed straight to COPY, not
-- a materialised set (a SECURITY INVOKER function gives a hijacked search_path no privilege).
DO $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %1$I.users_audit_rows(day DATE) RETURNS SETOF %1$I.users_audit '
        'LANGUAGE sql STABLE SECURITY INVOKER '
        'AS $body$ SELECT * FROM %1$I.users_audit WHERE changed_at >= $1 AND changed_at < $1 + 1 $body$',
        current_schema());
END
$$;

-- export_audit_data(day): the rows of users_audit_rows(day), ordered by id, written by the
-- server to <export_dir>/<export_name>_YYYYMMDD.csv with a header line; returns that path.
-- The bytes equal
--     COPY (SELECT * FROM users_audit WHERE changed_at >= day AND changed_at < day + 1 ORDER BY id)
--     TO STDOUT WITH (FORMAT csv, HEADER)
-- in a session with the default settings, whatever the caller's DateStyle, IntervalStyle or
-- client_encoding: the function pins them. The file name is derived from the date and the
-- installed export_name only, so a caller cannot make it write anywhere but the configured
-- directory.
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
    SELECT rtrim(export_dir, '/') || '/' || export_name || '_' || to_char(day, 'YYYYMMDD') || '.csv'
    INTO STRICT path
    FROM audit_settings;
    EXECUTE format(
        'COPY (SELECT * FROM users_audit_rows(%L::date) ORDER BY id) TO %L WITH (FORMAT csv, HEADER, ENCODING %L)',
        day, path, 'UTF8');
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
REVOKE ALL ON FUNCTION users_audit_rows(DATE) FROM PUBLIC;

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

-- The consumer's least-privilege role: LOGIN REPLICATION, USAGE on the install schema, SELECT
-- on users_audit and EXECUTE on the read-only users_audit_rows(date), nothing more. It is
-- created without a password (only a superuser may create a REPLICATION role); give it one with
-- ALTER ROLE audit_tail PASSWORD '...' and allow it in pg_hba.conf for this database. A role of
-- that name that already exists is left as it is and only granted these. verify finds
-- users_audit by its plain name, so outside public the role's search_path in this database is
-- set to the install schema. It gets no EXECUTE on the functions that write files
-- (export_audit_data, export_todays_audit_data): they write on the server as their owner, and
-- the role that reads the trail from the network must not be able to overwrite a day's export
-- (or fill the disk).
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
        GRANT EXECUTE ON FUNCTION users_audit_rows(DATE) TO audit_tail;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO audit_tail', current_schema());
        IF current_schema() <> 'public' AND NOT EXISTS (
               SELECT FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
               WHERE d.datname = current_database() AND s.setrole = 'audit_tail'::regrole
                 AND s.setconfig @> ARRAY[format('search_path=%I', current_schema())]) THEN
            BEGIN
                EXECUTE format('ALTER ROLE audit_tail IN DATABASE %I SET search_path = %I',
                               current_database(), current_schema());
                RAISE NOTICE 'audit-tail: role audit_tail now has search_path = % in database %, so that it finds users_audit by its plain name',
                    current_schema(), current_database();
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'audit-tail: could not set the search_path of role audit_tail: %', SQLERRM
                    USING HINT = format('as a superuser: ALTER ROLE audit_tail IN DATABASE %I SET search_path = %I',
                                        current_database(), current_schema());
            END;
        END IF;
    END IF;
END
$$;

-- The nightly export, scheduled with pg_cron at 03:00. At 03:00 the day has barely begun, so the
-- job exports the previous, complete day: current_date - 1. It is the one job of the database:
-- when sql/audit_log.sql is installed, it also runs audit.nightly_log (the log's partitions,
-- export and retention) after users_audit's export, in the same statement. pg_cron 1.4 (Debian
-- bookworm) reads schedules in GMT (cron.timezone exists only from 1.5), while current_date and
-- changed_at follow the server's TimeZone: on a server whose TimeZone is not UTC, 03:00 GMT is
-- another local hour.
--
-- pg_cron keeps its jobs in one database, cron.database_name (default postgres), and version 1.4
-- keeps the database of a job that already has a name: so each database has its own job name,
-- export-daily-audit-data for the cron database's own install (the tutorial's name) and
-- export-daily-audit-data-<database> for any other. Installed in the cron database, this creates
-- the extension and upserts the job by name; it also replaces the jobs of an earlier install: a
-- job that called the tutorial's export_todays_audit_data() (which exported the current day), and
-- a job of the shared name that exports another database (moved to that database's own name).
-- Installed anywhere else, it installs the rest and says in a NOTICE the one statement to run in
-- the cron database.
DO $$
DECLARE
    cron_db TEXT := current_setting('cron.database_name', true);
    job_name TEXT := 'export-daily-audit-data';
    job_command TEXT := format('SELECT %I.export_audit_data(current_date - 1)', current_schema());
    old RECORD;
BEGIN
    -- Once sql/audit_log.sql is installed, the same job exports the log too (see there).
    -- The log's day is yesterday in the log's own zone (audit.log_today(), sql/audit_log.sql).
    IF to_regprocedure('audit.nightly_log(date)') IS NOT NULL AND to_regprocedure('audit.log_today()') IS NOT NULL THEN
        job_command := job_command || ', audit.nightly_log(audit.log_today() - 1)';
    ELSIF to_regprocedure('audit.nightly_log(date)') IS NOT NULL THEN
        job_command := job_command || ', audit.nightly_log(current_date - 1)';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_cron') THEN
        RAISE WARNING 'pg_cron is not installed on this server: the nightly export is not scheduled'
            USING HINT = 'install it (Debian: apt-get install postgresql-15-cron), set shared_preload_libraries = ''pg_cron'', restart the server and run this script again';
    ELSIF cron_db IS NULL THEN
        RAISE WARNING 'pg_cron is installed but not loaded: the nightly export is not scheduled'
            USING HINT = 'set shared_preload_libraries = ''pg_cron'' in postgresql.conf, restart the server and run this script again';
    ELSIF current_database() <> cron_db THEN
        job_name := job_name || '-' || current_database();
        RAISE NOTICE 'pg_cron keeps its jobs in database "%", not here: to schedule the nightly export of this database, run in "%": %',
            cron_db, cron_db,
            format('SELECT cron.schedule_in_database(%L, %L, %L, %L);',
                   job_name, '0 3 * * *', job_command, current_database())
            USING DETAIL = format('pg_cron must be created in "%s" first, once: CREATE EXTENSION IF NOT EXISTS pg_cron;', cron_db)
                           || CASE WHEN to_regprocedure('audit.nightly_log(date)') IS NULL
                                   THEN ' If you install sql/audit_log.sql too (audit-tail setup does, right after this), run the statement its NOTICE gives instead: the same job, which exports audit.log as well.'
                                   ELSE '' END,
                  HINT = format('each database has its own job; a job of an earlier install that exports this database under another name (such as export-daily-audit-data) would export it twice: find it with SELECT jobid, jobname FROM cron.job WHERE database = %L and remove it with SELECT cron.unschedule(jobid)',
                                current_database());
    ELSE
        CREATE EXTENSION IF NOT EXISTS pg_cron;
        FOR old IN SELECT jobid, schedule, command, database FROM cron.job
                   WHERE jobname = job_name AND database <> current_database() LOOP
            PERFORM cron.schedule_in_database(job_name || '-' || old.database, old.schedule,
                                              old.command, old.database);
            PERFORM cron.unschedule(old.jobid);
            RAISE NOTICE 'audit-tail: the pg_cron job % exported database %: it is now named %, since each database has its own job',
                job_name, old.database, job_name || '-' || old.database;
        END LOOP;
        FOR old IN SELECT jobid, jobname, command FROM cron.job
                   WHERE database = current_database() AND command ~ 'export_todays_audit_data'
                     AND jobname IS DISTINCT FROM job_name LOOP
            PERFORM cron.unschedule(old.jobid);
            RAISE NOTICE 'audit-tail: unscheduled pg_cron job % (%), which exported the current day at 03:00 through export_todays_audit_data(): the job % replaces it and exports the previous complete day',
                coalesce(old.jobname, old.jobid::text), old.command, job_name;
        END LOOP;
        SELECT command INTO old FROM cron.job WHERE jobname = job_name AND username = current_user;
        IF FOUND AND old.command <> job_command THEN
            RAISE NOTICE 'audit-tail: the pg_cron job % ran "%"; it now runs "%", which exports the previous complete day (at 03:00 the current day has barely begun)',
                job_name, old.command, job_command;
        END IF;
        PERFORM cron.schedule(job_name, '0 3 * * *', job_command);
    END IF;
END
$$;

COMMIT;

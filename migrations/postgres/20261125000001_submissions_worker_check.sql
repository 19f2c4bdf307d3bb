-- submissions.worker_id → workers(id), checked once per statement instead of once per row.
--
-- Why. The seed declares `worker_id UUID NOT NULL REFERENCES workers(id) ON DELETE CASCADE`.
-- PostgreSQL checks a declared foreign key with one SPI query per inserted row (an executor
-- start, an index scan of workers and a row lock, ~13 µs a row on the project's 2-core
-- machine). For the writer's 1,000-row batches that was 45 % of the whole insert: 33 µs a row
-- with the constraint, 18.6 µs with the statement check below (same indexes, same
-- ON CONFLICT DO NOTHING; measured with 100 batches of 1,000 rows over 1,000 workers). At
-- 10k shares/s that is the difference between PostgreSQL taking a third of a core and a
-- fifth, on the cores the proxy and its miners need.
--
-- The guarantee is the seed's, enforced by triggers:
--   * every inserted submission names an existing worker: after each INSERT statement, the
--     distinct worker ids of the new rows are locked FOR KEY SHARE (as a foreign key does,
--     so a concurrent DELETE of the worker waits for this transaction, and a worker deleted
--     by a committed transaction is not found) and any missing one raises SQLSTATE 23503
--     foreign_key_violation;
--   * deleting workers deletes their submissions (ON DELETE CASCADE), after each DELETE
--     statement, including deletes cascading from miners and pools;
--   * changing a referenced workers.id raises 23503 (the foreign key's NO ACTION);
--   * TRUNCATE workers is refused while submissions has rows (truncate submissions first).
-- The check is on the partitioned table and on every partition that
-- loka_submission_partition creates, so an INSERT straight into a partition is checked too;
-- a partition attached by hand (ATTACH PARTITION) needs the same trigger added by hand.
-- An UPDATE of submissions.worker_id is not checked: nothing in Loka updates it, and a
-- statement-level update check would need both transition tables on a partitioned table.

ALTER TABLE submissions DROP CONSTRAINT IF EXISTS submissions_worker_id_fkey;

CREATE FUNCTION loka_submissions_worker_exists() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
DECLARE
    missing BIGINT;
BEGIN
    WITH ids AS (SELECT DISTINCT worker_id FROM new_rows),
         found AS (
             SELECT w.id FROM workers w JOIN ids ON w.id = ids.worker_id FOR KEY SHARE OF w
         )
    SELECT (SELECT count(*) FROM ids) - (SELECT count(*) FROM found) INTO missing;
    IF missing > 0 THEN
        RAISE EXCEPTION 'insert or update on table "%" violates foreign key: % worker_id value(s) not present in table "workers"',
            TG_TABLE_NAME, missing
            USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME,
                  CONSTRAINT = 'submissions_worker_id_fkey';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER submissions_worker_exists AFTER INSERT ON submissions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION loka_submissions_worker_exists();

-- The same check on one partition (inserts straight into it skip the parent's triggers).
CREATE FUNCTION loka_submissions_partition_check(part TEXT) RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER submissions_worker_exists AFTER INSERT ON %I '
        'REFERENCING NEW TABLE AS new_rows '
        'FOR EACH STATEMENT EXECUTE FUNCTION loka_submissions_worker_exists()',
        part);
END $$;

-- Every existing partition (created by the first migration and at start-up since).
SELECT loka_submissions_partition_check(c.relname)
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'submissions'::regclass;

-- The first migration's loka_submission_partition, restated with one line more: a new
-- partition gets the check as it is created.
CREATE OR REPLACE FUNCTION loka_submission_partition(at TIMESTAMPTZ) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    month_start TIMESTAMP := date_trunc('month', at AT TIME ZONE 'UTC');
    part TEXT := 'submissions_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF to_regclass(part) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF submissions FOR VALUES FROM (%L) TO (%L)',
                part,
                to_char(month_start, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                to_char(month_start + INTERVAL '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
            PERFORM loka_submissions_partition_check(part);
        EXCEPTION WHEN duplicate_table THEN
            NULL; -- another proxy replica created it first
        END;
    END IF;
    RETURN part;
END $$;

CREATE FUNCTION loka_workers_delete_submissions() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM submissions s USING old_rows o WHERE s.worker_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER workers_delete_submissions AFTER DELETE ON workers
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION loka_workers_delete_submissions();

CREATE FUNCTION loka_workers_id_referenced() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM submissions WHERE worker_id = OLD.id) THEN
        RAISE EXCEPTION 'update on table "workers" violates foreign key on table "submissions": id % is still referenced', OLD.id
            USING ERRCODE = 'foreign_key_violation', TABLE = 'submissions',
                  CONSTRAINT = 'submissions_worker_id_fkey';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER workers_id_referenced AFTER UPDATE OF id ON workers
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION loka_workers_id_referenced();

CREATE FUNCTION loka_workers_truncate_guard() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM submissions) THEN
        RAISE EXCEPTION 'cannot truncate table "workers": table "submissions" references it (truncate submissions first)'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER workers_truncate_guard BEFORE TRUNCATE ON workers
    FOR EACH STATEMENT EXECUTE FUNCTION loka_workers_truncate_guard();

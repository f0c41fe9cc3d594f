-- depends: 0011_rls
-- A durable audit row no longer costs the query a WAL flush of its own (issue 25 item 6):
-- with TRACE_QUERY_AUDIT_DURABLE=true the service writes the row as 'started' (who, what it
-- reads, the SQL's sha256) with a durable commit while the engine runs, and answers only
-- once that commit is done; the outcome then replaces 'started' with an asynchronous commit.
-- A row still 'started' after a Postgres crash is a query that was answered or was running.
ALTER TABLE data.query_audit DROP CONSTRAINT query_audit_outcome_check;
ALTER TABLE data.query_audit DROP CONSTRAINT query_audit_check2;
ALTER TABLE data.query_audit ADD CONSTRAINT query_audit_outcome_check
    CHECK (outcome IN ('started', 'ok', 'rejected', 'failed'));
ALTER TABLE data.query_audit ADD CONSTRAINT query_audit_error_code_check
    CHECK ((outcome IN ('ok', 'started')) = (error_code IS NULL));

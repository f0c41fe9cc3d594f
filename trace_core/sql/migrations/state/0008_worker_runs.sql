-- Worker runs requested by the trace_worker_wakeups sensor, keyed by their Dagster run key,
-- with the tasks each carries. Wake-ups are acked when the run is requested; if that run
-- never appears in Dagster (the process that ticked died) or ends before claiming its tasks
-- (failed or canceled while queued), the sensor re-wakes those tasks at once instead of
-- waiting out TRACE_REWAKE_AFTER_SECONDS. A run settles once none of its tasks waits on it.
CREATE TABLE state.worker_runs (
    run_key      text PRIMARY KEY,
    task_ids     uuid[]      NOT NULL CHECK (cardinality(task_ids) > 0),
    requested_at timestamptz NOT NULL DEFAULT now(),
    settled_at   timestamptz,
    rewoken      integer     NOT NULL DEFAULT 0
);
CREATE INDEX worker_runs_open_idx ON state.worker_runs (requested_at) WHERE settled_at IS NULL;

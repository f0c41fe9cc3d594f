-- Reviving dead tasks (trace-lite retry, a re-executed Dagster run, a launched stream partition).
-- A revive gives a task a fresh attempt budget without reusing attempt numbers (fencing and the
-- task_attempts history need them unique): attempts keep counting up, and attempt_base is the
-- number spent before the latest revive, so the budget is attempt - attempt_base < max_attempts.
ALTER TABLE state.tasks
    ADD COLUMN attempt_base integer NOT NULL DEFAULT 0,
    ADD COLUMN revives      integer NOT NULL DEFAULT 0,
    ADD COLUMN revived_at   timestamptz,
    ADD CONSTRAINT tasks_attempt_base_check CHECK (attempt_base >= 0 AND attempt_base <= attempt),
    ADD CONSTRAINT tasks_revives_check CHECK (revives >= 0);

-- One row per revive: what it found (attempt, last error) and who asked (source + detail, e.g.
-- the CLI or a Dagster run id). History only; the task row is the authority.
CREATE TABLE state.task_revivals (
    task_id     uuid        NOT NULL REFERENCES state.tasks (task_id) ON DELETE CASCADE,
    revive      integer     NOT NULL CHECK (revive > 0),
    attempt     integer     NOT NULL,
    last_error  text,
    source      text        NOT NULL,
    detail      text,
    revived_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, revive)
);

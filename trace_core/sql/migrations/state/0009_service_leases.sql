-- Long-lived service runs (hot follower, hot compactor, sink, alert delivery) hold a lease per
-- service, renewed on every step. A run killed without a trace in Dagster's storage (SIGKILL
-- under a launcher that cannot check its workers) lets the lease lapse, and the service's
-- sensor starts a fresh run; a second run finds the lease held and ends at once.
CREATE TABLE state.service_leases (
    service          text        PRIMARY KEY,
    holder           text        NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    acquired_at      timestamptz NOT NULL DEFAULT now()
);

-- Fake data is never silent: a version made by TRACE_CRYO_MODE=fake (or derived from one) is
-- marked, so status, the UI and the Query Service can tell it from the chain's own data.
ALTER TABLE state.dataset_versions ADD COLUMN fake boolean NOT NULL DEFAULT false;

-- depends: 0008_alert_channels
-- Every tenant row of the data database carries its org (issue 22). Existing rows belong to
-- the default org. New rows take the transaction's org (trace.org_id: tenant_scope, or the
-- runtime's connections, which set the deployment's org), else the default org; a delivery
-- and its attempts take their event's org.

CREATE FUNCTION data.current_org_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULLIF(current_setting('trace.org_id', true), '')::uuid $$;

CREATE FUNCTION data.org_or_default() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT COALESCE(NULLIF(current_setting('trace.org_id', true), '')::uuid,
                      '00000000-0000-0000-0000-000000000001'::uuid) $$;

ALTER TABLE data.hot_blocks ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE data.hot_transactions ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE data.hot_logs ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE data.data_invalidations ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE data.alert_events ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE data.alert_deliveries ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE data.alert_delivery_attempts ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';

ALTER TABLE data.hot_blocks ALTER COLUMN org_id SET DEFAULT data.org_or_default();
ALTER TABLE data.hot_transactions ALTER COLUMN org_id SET DEFAULT data.org_or_default();
ALTER TABLE data.hot_logs ALTER COLUMN org_id SET DEFAULT data.org_or_default();
ALTER TABLE data.data_invalidations ALTER COLUMN org_id SET DEFAULT data.org_or_default();
ALTER TABLE data.alert_events ALTER COLUMN org_id SET DEFAULT data.org_or_default();
ALTER TABLE data.alert_deliveries ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE data.alert_delivery_attempts ALTER COLUMN org_id DROP DEFAULT;

CREATE FUNCTION data.stamp_org_from_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.org_id IS NULL THEN
        NEW.org_id := COALESCE(
            (SELECT org_id FROM data.alert_events WHERE dedupe_key = NEW.dedupe_key),
            data.org_or_default());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alert_deliveries_org BEFORE INSERT ON data.alert_deliveries
    FOR EACH ROW EXECUTE FUNCTION data.stamp_org_from_event();

CREATE FUNCTION data.stamp_org_from_delivery() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.org_id IS NULL THEN
        NEW.org_id := COALESCE(
            (SELECT org_id FROM data.alert_deliveries WHERE delivery_id = NEW.delivery_id),
            data.org_or_default());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alert_delivery_attempts_org BEFORE INSERT ON data.alert_delivery_attempts
    FOR EACH ROW EXECUTE FUNCTION data.stamp_org_from_delivery();

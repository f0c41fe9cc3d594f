"""``/v1/alerts``: alert definitions (YAML bodies, as ``trace-lite alerts apply``) and their
deliveries, in the caller's org. Webhook URLs are shown redacted, as the CLI shows them."""

from __future__ import annotations

from trace_core.alerts.delivery import list_deliveries as deliveries_of
from trace_core.alerts.store import AlertRow, get_alert, list_alerts
from trace_core.api import models as m
from trace_core.api.http import Call, Reply, not_found
from trace_core.api.jobs import apply_document
from trace_core.db.queries import q
from trace_core.errors import AlertNotFound


def _alert(row: AlertRow) -> m.Alert:
    return m.Alert(
        name=row.name,
        alert_id=row.alert_id,
        job=row.job_name,
        enabled=row.enabled,
        definition=row.as_json(),
    )


def _get(call: Call) -> AlertRow:
    name = call.params["name"]
    with call.state() as conn:
        try:
            return get_alert(conn, call.org_id, name)
        except AlertNotFound:
            raise not_found("alert", name) from None


def create_alert(call: Call) -> Reply:
    """Apply an alert YAML (kind: alert); 201 when new, 200 when updated or unchanged."""
    return apply_document(call, expect="alert")


def list_alert_definitions(call: Call) -> Reply:
    """The org's alert definitions."""
    with call.state() as conn:
        rows = list_alerts(conn, call.org_id)
    return m.AlertList(alerts=[_alert(r) for r in rows])


def get_alert_definition(call: Call) -> Reply:
    """One alert definition by name or id."""
    return _alert(_get(call))


def update_alert(call: Call) -> Reply:
    """Replace an existing alert's YAML (the body names the same alert); 404 if there is none."""
    _get(call)
    return apply_document(call, expect="alert", name=call.params["name"])


def delete_alert(call: Call) -> Reply:
    """Delete an alert definition (its events and deliveries stay as history)."""
    row = _get(call)
    with call.state() as conn:
        conn.execute(q("api", "delete_alert"), {"org_id": call.org_id, "name": row.name})
    return m.Deleted(name=row.name, id=row.alert_id)


def list_alert_deliveries(call: Call) -> Reply:
    """An alert's deliveries, newest first (``?limit=``, default 100, at most 1000)."""
    row = _get(call)
    raw = call.query.get("limit", "100")
    limit = min(int(raw), 1000) if raw.isdigit() and int(raw) > 0 else 100
    with call.data() as conn:
        rows = deliveries_of(conn, alert_name=row.name, limit=limit)
    return m.DeliveryList(deliveries=[m.Delivery.model_validate(r) for r in rows])

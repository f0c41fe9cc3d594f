"""What every sensor body shares."""

from dagster import DagsterInstance, DagsterInvariantViolationError, SensorEvaluationContext


def instance_of(context: SensorEvaluationContext) -> DagsterInstance | None:
    """The sensor's instance, or None for a context built in a test without one."""
    try:
        return context.instance
    except DagsterInvariantViolationError:
        return None

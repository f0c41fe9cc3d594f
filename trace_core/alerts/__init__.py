"""Alerting: YAML definitions (``spec``, ``store``), downstream wake-ups (``routing``), the
``alert_evaluate`` operator (``evaluate``) and webhook/log delivery (``delivery``).
See docs/alerts.md."""

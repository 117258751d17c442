"""Unit tests of the host:
daemon/app.py, cli, config, control, metrics, notify, preflight, reload, supervisor, system, health, eod."""

"""Integration tests of daemon/standby/."""

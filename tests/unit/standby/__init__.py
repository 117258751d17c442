"""Unit tests of daemon/standby/."""

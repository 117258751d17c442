"""Integration tests of daemon/uplinks/."""

"""Unit tests of daemon/uplinks/."""

"""Integration tests of daemon/venues/."""

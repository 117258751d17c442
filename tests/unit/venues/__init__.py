"""Unit tests of daemon/venues/."""

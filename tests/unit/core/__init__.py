"""Unit tests of daemon/core/ (the ground floor)."""

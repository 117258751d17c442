"""Integration tests of hardware/."""

"""Integration tests of recovery/."""

"""Integration tests of lab/ (drills, world, venue emulator, report)."""

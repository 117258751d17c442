"""Unit tests of recovery/."""

"""Unit tests of hardware/."""

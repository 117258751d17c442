"""Unit tests of what ships beside the code:
the wheel and its entry points, systemd units, monitoring rules."""

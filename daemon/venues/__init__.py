"""The trading venues, seen through every uplink: probes, dead-man switches, reconciliation after a promotion."""

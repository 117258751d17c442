"""The lab: what exercises the daemon from outside (device simulators, ...). The daemon never
imports it."""

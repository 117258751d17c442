"""lifeline: the resilience daemon of a hardened trading host.

The process lives here: config, supervisor, event bus, control socket, metrics,
system health, sd_notify, the CLI, and (in sub-packages) uplinks, standby and lab.
"""

__version__ = "0.1.0"

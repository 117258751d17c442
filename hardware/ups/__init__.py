"""The UPS: Megatec/Q1 over a serial line, or NUT's ``upsd`` over TCP (issue 8).

* :mod:`hardware.ups.q1` — the Megatec/Q1 codec (sans-IO);
* :mod:`hardware.ups.nut` — NUT's upsd line protocol (sans-IO);
* :mod:`hardware.ups.reading` — :class:`UpsReading` and its constructors (sans-IO);
* :mod:`hardware.ups.runtime` — the battery runtime estimate, as NUT's blazer.c (sans-IO);
* :mod:`hardware.ups.monitor` — :class:`UpsMonitor`, readings → events (sans-IO);
* :mod:`hardware.ups.driver` — the serial driver, the upsd client and source (trio, pyserial).

The sans-IO modules import neither trio nor pyserial. The simulators (a Q1 UPS on a pty,
a tiny upsd) are the lab's: :mod:`lab.sim.ups`.
"""

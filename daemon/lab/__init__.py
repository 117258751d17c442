"""The lab: the whole world of a lifeline pair built on one machine, and the drills that
time its failures.

For now it runs one real ``lifeline run`` process the way systemd would (notify socket,
watchdog), checks it end to end and reports; the network-namespace world (edge host,
terrestrial and satellite routers, venues, witness) and the drills grow here.
"""

"""Device simulators for the lab and the tests: each speaks a device's side (a UPS, a GNSS
receiver, an enclosure sensor) on a pty or a socket. ``lifeline sim ups|gnss|enclosure``
runs one. Production modules (daemon/, hardware/, recovery/) never import them."""

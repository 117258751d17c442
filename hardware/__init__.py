"""Serial devices and the watchdog of the hardened host (UPS, GNSS, enclosure sensors).

Each device is a sans-IO protocol core, a trio driver over pyserial and a simulator
that speaks the device's side on a pty. Filled in by the hardware issue.
"""

"""The lab: drills, the namespace world, emulators and simulators, and its recorded data (never imported by the daemon)."""

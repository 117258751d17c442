"""What the tests share (one place each): ``cli`` (the repository's root, the CLI as a
subprocess), ``ports`` (free loopback ports), ``waiting`` (polling what real processes
expose), ``pair`` (two real `lifeline run` processes on loopback), ``hardware`` (device
monitors' events as pairs, the device loop)."""

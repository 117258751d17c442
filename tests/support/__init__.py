"""What the tests share, one place each (README "Develop"):

- ``cli``: the repository's root and the `lifeline` CLI as a subprocess;
- ``ports``: free loopback ports (the lab's :func:`lab.procs.free_port`);
- ``waiting``: ``until`` / ``wait_for`` (polling what real processes expose) and
  ``wait_until`` (the same inside a trio run);
- ``events``: ``drain``, the events waiting on a bus subscription;
- ``pair``: two real `lifeline run` processes on loopback (``Pair``, ``LeasePair`` on a
  :class:`lab.procs.WitnessProcess` or etcd, ``Writer``, ``Feed``, the witness-pair fixture);
- ``proxy``: ``LinkProxy``, a relay on a replication link that the test controls;
- ``tls``: a self-signed server context;
- ``files``: ``spy_fsync``, which descriptors a durable write syncs;
- ``hardware``: device monitors' events as pairs, the hardware service's device loop.
"""

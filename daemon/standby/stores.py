"""The lease store ``[standby.lease]`` names, opened from its config: the witness's client or
etcd's (both behind :class:`~daemon.standby.lease.LeaseStore`)."""

from __future__ import annotations

from daemon.core.log import get_logger
from daemon.standby.config import LeaseConfig
from daemon.standby.keys import load_replication_key
from daemon.standby.lease import LeaseStore
from daemon.standby.witness import WitnessLeaseStore

log = get_logger("lease")


def open_lease_store(lease: LeaseConfig, node: str, replication_key: bytes) -> LeaseStore:
    """The backend ``[standby.lease]`` names, built from its config (a
    :class:`daemon.config.LeaseConfig`); ``replication_key`` authenticates to the
    witness unless ``witness_key_file`` names another key."""
    timeout = float(lease.retry_timeout)
    if lease.backend == "witness":
        if lease.witness_key_file:
            key = load_replication_key(lease.witness_key_file)
        else:
            # Compatibility only: the witness host then holds the key that authenticates
            # replication (it could impersonate either node to the other).
            log.warning("lease.witness_uses_replication_key", node=node,
                                        fix="make a witness key (`lifeline keys witness --out PATH`), set "
                                            "[standby.lease] witness_key_file and give it to the witness")
            key = replication_key
        assert lease.witness is not None  # the config requires it with backend = "witness"
        return WitnessLeaseStore(lease.witness, key, lease.cluster, node, float(lease.ttl), timeout)
    if lease.backend == "etcd":
        # lazy: the etcd client loads httpx (~100 ms, ~8 MB with rich), only for an etcd lease
        from daemon.standby.etcd import EtcdLeaseStore, load_password, ssl_context

        tls = None
        if lease.etcd_ca is not None or lease.etcd_cert is not None:
            tls = ssl_context(lease.etcd_ca, lease.etcd_cert, lease.etcd_key)
        credentials = None
        if lease.etcd_user is not None and lease.etcd_password_file is not None:
            credentials = load_password(lease.etcd_password_file, lease.etcd_user)
        return EtcdLeaseStore(list(lease.etcd_endpoints), lease.cluster, node, float(lease.ttl), timeout,
                              prefix=lease.etcd_prefix, tls=tls, credentials=credentials)
    raise ValueError(f"unknown lease backend {lease.backend!r}")

#!/usr/bin/env python3
"""Benchmark: what TLS with client certificates and etcd's authentication cost the lease,
against plain http to the same etcd version, measured in the same run.

    .venv/bin/python bench/etcd_security.py [--renewals 300] [--reads 300]

Two single-member etcd clusters on loopback (Debian's ``/usr/bin/etcd``, the lab's fast
timers): one plain, one as the lab runs it (TLS on client and peer ports, client
certificates required, auth on; certificates made for the run). Against each, one
:class:`daemon.standby.etcd.EtcdLeaseStore` acquires the lease, then renews it
``--renewals`` times (a keepalive and a linearizable read each, what the primary does
every ttl / 3) and reads it ``--reads`` times (what a standby does); the first call's
latency includes the TLS handshake and, with auth, the authentication (bcrypt on
etcd's side, cost 10). Then the cost of authenticating again (an expired token) is
measured alone, ``--auths`` times. No root needed.

Figures are nearest-rank percentiles in milliseconds; the ratio is secure over plain.
Human lines go to stdout; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from lab.etcd import EtcdAuth, EtcdCluster  # noqa: E402
from lab.ha_drills import percentile  # noqa: E402
from lab.pki import make_etcd_pki  # noqa: E402
from daemon.standby.etcd import EtcdCredentials, EtcdLeaseStore  # noqa: E402


async def measure(cluster: EtcdCluster, renewals: int, reads: int, auths: int) -> dict[str, Any]:
    credentials = None
    if cluster.auth is not None:
        credentials = EtcdCredentials(cluster.auth.user, cluster.auth.password)
    store = EtcdLeaseStore(cluster.endpoints, "bench", "a", 2.0, 5.0, tls=cluster.client_context(),
                           credentials=credentials)
    try:
        began = time.perf_counter()
        grant = await store.acquire("a", 0)
        first_ms = (time.perf_counter() - began) * 1000
        renew_ms, read_ms, auth_ms = [], [], []
        for _ in range(renewals):
            began = time.perf_counter()
            await store.renew("a", grant.epoch)
            renew_ms.append((time.perf_counter() - began) * 1000)
        for _ in range(reads):
            began = time.perf_counter()
            await store.read()
            read_ms.append((time.perf_counter() - began) * 1000)
        if credentials is not None:
            for _ in range(auths):
                began = time.perf_counter()
                await store._authenticate(trio.current_time() + 5.0, "bench")
                auth_ms.append((time.perf_counter() - began) * 1000)
        await store.release("a", grant.epoch)
    finally:
        await store.aclose()
    out = {"first_call_ms": round(first_ms, 2),
           "renew_p50_ms": round(percentile(renew_ms, 50), 2), "renew_p99_ms": round(percentile(renew_ms, 99), 2),
           "read_p50_ms": round(percentile(read_ms, 50), 2), "read_p99_ms": round(percentile(read_ms, 99), 2)}
    if auth_ms:
        out.update(authenticate_p50_ms=round(percentile(auth_ms, 50), 2),
                   authenticate_p99_ms=round(percentile(auth_ms, 99), 2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renewals", type=int, default=300)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--auths", type=int, default=30)
    args = parser.parse_args()
    if not EtcdCluster.available():
        print("etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-etcd-") as tmp:
        root = Path(tmp)
        pki = make_etcd_pki(root / "pki")
        for name, kwargs in (("plain", {}), ("secure", {"tls": pki, "auth": EtcdAuth.generate()})):
            with EtcdCluster.local(1, root / name, **kwargs) as cluster:
                results[name] = trio.run(measure, cluster, args.renewals, args.reads, args.auths)
    plain, secure = results["plain"], results["secure"]
    print(f"{'':24}{'plain http':>12}{'TLS + auth':>12}{'ratio':>8}")
    for key in ("first_call_ms", "renew_p50_ms", "renew_p99_ms", "read_p50_ms", "read_p99_ms"):
        print(f"{key:24}{plain[key]:>12.2f}{secure[key]:>12.2f}{secure[key] / plain[key]:>8.2f}")
    print(f"{'authenticate_p50_ms':24}{'':>12}{secure['authenticate_p50_ms']:>12.2f}")
    print(f"{'authenticate_p99_ms':24}{'':>12}{secure['authenticate_p99_ms']:>12.2f}")
    figures: dict[str, Any] = {"renewals": args.renewals, "reads": args.reads}
    figures.update({f"plain_{k}": v for k, v in plain.items()})
    figures.update({f"secure_{k}": v for k, v in secure.items()})
    for key in ("renew_p50_ms", "renew_p99_ms", "read_p50_ms", "read_p99_ms"):
        figures[f"ratio_{key.removesuffix('_ms')}"] = round(secure[key] / plain[key], 2)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

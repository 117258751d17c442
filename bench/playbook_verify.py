#!/usr/bin/env python3
"""Benchmark: full verification of a 3-signature playbook, against three raw Ed25519 verifies.

    .venv/bin/python bench/playbook_verify.py [--iterations 3000] [--rounds 10]

No root needed. In a temp dir it makes three operator keys, a 3-of-3 keyring (written
and loaded through :func:`recovery.keys.load_keyring`, as the daemon does), a realistic
playbook (triggers, a precondition, six steps with rollbacks and an ``exec``) signed by
all three, and an anti-rollback record with earlier versions of it.

Measured, per call, with ``time.perf_counter_ns``:

* **full**: :func:`recovery.verify.verify_playbook` exactly as the daemon calls it
  before a run: read ``NAME.toml`` and ``NAME.toml.sig`` from disk, check every
  signature line against the keyring (3 Ed25519 verifies), parse and validate the
  playbook, check name, expiry, the anti-rollback record (read from disk) and the exec
  allow-list. The keyring is loaded once (the daemon loads it per verification too, but
  that is a file read and three public keys; it is measured separately as
  ``keyring_load``).
* **baseline**: three raw ``Ed25519PublicKey.verify`` calls over the same three signed
  messages (the cryptographic floor of any 3-signature scheme), in the same process,
  in rounds interleaved with the full runs so that both see the same machine state.
* breakdown: ``signatures`` (:func:`recovery.signing.verify_signatures` on bytes in
  memory) and ``parse`` (:func:`recovery.playbook.parse_playbook`).

``ratio`` = full median / baseline median. Target: full verification under 1 ms
(median; p99 reported too). The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from recovery.keys import init_keyring, key_id, load_keyring, write_keyring  # noqa: E402
from recovery.playbook import parse_playbook  # noqa: E402
from recovery.signing import sign_playbook, signature_path, signed_message, verify_signatures  # noqa: E402
from recovery.verify import RollbackState, verify_playbook  # noqa: E402

TARGET_US = 1000.0

PLAYBOOK = """# Regional disaster: the primary's region is gone. Promote here, move to Starlink,
# cancel resting orders at the venues, page the desk.
name = "regional-disaster"
version = 7
expires = 2030-06-30T00:00:00Z
description = "Primary region lost: promote this standby, route over Starlink, cancel resting orders, page the desk"
requires_role = "standby"
cooldown = "15m"

[[trigger]]
event = "ActiveUplinkChanged"
where = { active = "starlink" }

[[trigger]]
event = "UpsOnBattery"

[[precondition]]
check = "uplink_active"
equals = "starlink"

[[step]]
action = "notify"
args = { message = "regional disaster playbook starting: promoting this node", level = "warning" }

[[step]]
action = "engine.halt"
args = { reason = "regional disaster: failing over" }
timeout = "5s"
on_failure = "abort"
[step.rollback]
action = "engine.resume"

[[step]]
action = "standby.promote"
args = { accept_loss = true }
timeout = "30s"
on_failure = "rollback"
[step.rollback]
action = "standby.demote"

[[step]]
action = "uplink.use"
args = { name = "starlink" }
timeout = "10s"
on_failure = "rollback"
[step.rollback]
action = "uplink.auto"

[[step]]
action = "exec"
args = { argv = ["/usr/local/bin/page-desk", "--severity", "critical", "regional disaster"] }
timeout = "20s"
on_failure = "continue"

[[step]]
action = "engine.resume"
timeout = "5s"
"""


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """n calls of fn, each timed alone, in microseconds."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        fn()
        out.append((clock() - start) / 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_us": round(statistics.median(s), 1), "p99_us": round(percentile(s, 0.99), 1),
            "min_us": round(s[0], 1), "mean_us": round(statistics.fmean(s), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000, help="timed calls per kind in total")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the calls are split into")
    args = parser.parse_args()
    per_round = max(1, args.iterations // args.rounds)

    with tempfile.TemporaryDirectory(prefix="lifeline-bench-verify-") as tmp:
        d = Path(tmp)
        keys = [Ed25519PrivateKey.generate() for _ in range(3)]
        keyring_path = d / "keyring.toml"
        write_keyring(init_keyring(3, [(k.public_key(), h) for k, h in zip(keys, ("alice", "bob", "carol"))],
                                   ["/usr/local/bin/page-desk"]), keyring_path, create=True)
        keyring = load_keyring(keyring_path)
        path = d / "regional-disaster.toml"
        path.write_text(PLAYBOOK)
        for k in keys:
            sign_playbook(path, k, keyring=keyring)
        state = RollbackState.for_state_dir(d / "state")
        state.record_run("regional-disaster", 6)
        state.record_run("fibre-lost", 3)
        now = datetime.now(timezone.utc)

        data = path.read_bytes()
        sig_text = signature_path(path).read_text()
        verified = verify_playbook(path, keyring, now=now, rollback_state=state)
        assert len(verified.signers) == 3 and verified.highest_run == 6
        messages = [(k.public_key(), k.sign(signed_message(data, key_id(k.public_key()))),
                     signed_message(data, key_id(k.public_key()))) for k in keys]

        def full() -> object:
            return verify_playbook(path, keyring, now=now, rollback_state=state)

        def baseline() -> None:
            for public, sig, msg in messages:
                public.verify(sig, msg)

        def signatures() -> object:
            return verify_signatures(data, sig_text, keyring)

        def parse() -> object:
            return parse_playbook(data, str(path))

        def keyring_load() -> object:
            return load_keyring(keyring_path)

        kinds = {"full": full, "baseline": baseline, "signatures": signatures, "parse": parse,
                 "keyring_load": keyring_load}
        for fn in kinds.values():  # warm up
            timed(fn, 50)
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(args.rounds):
            for name, fn in kinds.items():
                samples[name] += timed(fn, per_round)
        gc.collect()

    stats = {name: summary(values) for name, values in samples.items()}
    full_s, base_s = stats["full"], stats["baseline"]
    ratio = full_s["median_us"] / base_s["median_us"]
    ok = full_s["median_us"] < TARGET_US
    print(f"playbook verification benchmark: {len(PLAYBOOK.encode())} byte playbook, 3 signatures (3-of-3 keyring), "
          f"{per_round * args.rounds} calls per kind in {args.rounds} interleaved rounds; "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs")
    for name, s in stats.items():
        print(f"  {name:<13} median {s['median_us']:8.1f} us   p99 {s['p99_us']:8.1f} us   min {s['min_us']:8.1f} us")
    print(f"  full / baseline (3 raw Ed25519 verifies) = {ratio:.2f}")
    print(f"  target: full verification < {TARGET_US:.0f} us: {'ok' if ok else 'MISSED'} "
          f"(median {full_s['median_us']:.0f} us, p99 {full_s['p99_us']:.0f} us)")
    figures = {
        "full_median_us": full_s["median_us"], "full_p99_us": full_s["p99_us"], "full_min_us": full_s["min_us"],
        "baseline_median_us": base_s["median_us"], "baseline_p99_us": base_s["p99_us"],
        "ratio": round(ratio, 2),
        "signatures_median_us": stats["signatures"]["median_us"], "parse_median_us": stats["parse"]["median_us"],
        "keyring_load_median_us": stats["keyring_load"]["median_us"],
        "signatures": 3, "playbook_bytes": len(PLAYBOOK.encode()), "iterations": per_round * args.rounds,
        "target_us": TARGET_US, "target_met": ok,
    }
    print(json.dumps(figures), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

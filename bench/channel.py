#!/usr/bin/env python3
"""Benchmark: the CPU cost of the authenticated channel (daemon/standby/channel.py), sans-IO.

    .venv/bin/python bench/channel.py [--repeat 5] [--frames 300] [--batch 500] [--size 300]

No sockets, no processes: one primary and one standby ``ReplicationConnection`` joined by
hand after their handshake. Two figures, each the best of ``--repeat`` runs in CPU time
of this process (``time.process_time``: on a shared host, other tenants stretch wall
time, not the CPU a run takes):

1. **records**: ``--frames`` RECORDS frames of ``--batch`` records of ``--size`` bytes,
   each sent (encode, MAC), fed to the standby in 256 KiB reads (the shell's
   ``RECEIVE_CHUNK``) and decoded (header caps, MAC, counter, records), and one ACK back:
   the replication stream at load.
2. **frames**: HEARTBEAT frames one at a time: the per-frame cost of the skeleton.

**Baseline**, measured in the same run: the bare work any authenticated framing of the
same bytes must do, a header ``struct.pack`` and one HMAC-SHA256 (copied from a keyed
base, as the channel does) on each side, over the same frame bodies. ``ratio`` = the
channel's cost ÷ that floor (1.0 would mean the codec and the state machine are free).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hmac
import json
import struct
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.standby import Position, Record  # noqa: E402
from daemon.standby.protocol import (  # noqa: E402
    NEED_DATA,
    Ack,
    Auth,
    Challenge,
    Heartbeat,
    Hello,
    Records,
    ReplicationConnection,
    Welcome,
    encode_body,
)

KEY = bytes(range(32))
CHUNK = 256 * 1024


def streaming_pair() -> tuple[ReplicationConnection, ReplicationConnection]:
    primary, standby = ReplicationConnection("primary", KEY), ReplicationConnection("standby", KEY)
    for sender, receiver, event in ((standby, primary, Hello("b", "standby", 1, Position(1, 0), "v", b"d")),
                                    (primary, standby, Challenge()), (standby, primary, Auth()),
                                    (primary, standby, Welcome("a", 1, Position(1, 0), "v", b"d"))):
        receiver.receive_data(sender.send(event))
        receiver.next_event()
    return primary, standby


def best(run: Callable[[], float], repeat: int) -> float:
    """The shortest CPU time of ``repeat`` runs."""
    return min(run() for _ in range(repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frames", type=int, default=300, help="RECORDS frames per run")
    parser.add_argument("--batch", type=int, default=500, help="records per RECORDS frame")
    parser.add_argument("--size", type=int, default=300, help="bytes per record")
    parser.add_argument("--heartbeats", type=int, default=20_000, help="HEARTBEAT frames per run")
    args = parser.parse_args()

    payload = b"x" * args.size
    batches = [tuple(Record(i * args.batch + j + 1, 1, 0, payload) for j in range(args.batch))
               for i in range(args.frames)]
    records = args.frames * args.batch
    beats = [Heartbeat(i, i, b"c" * 32, b"v" * 32) for i in range(args.heartbeats)]

    def channel_records() -> float:
        primary, standby = streaming_pair()
        start = time.process_time()
        for batch in batches:
            data = primary.send(Records(batch))
            for k in range(0, len(data), CHUNK):
                standby.receive_data(data[k:k + CHUNK])
                while standby.next_event() is not NEED_DATA:
                    pass
            primary.receive_data(standby.send(Ack(batch[-1].seq)))
            primary.next_event()
        return time.process_time() - start

    def channel_frames() -> float:
        primary, standby = streaming_pair()
        start = time.process_time()
        for beat in beats:
            standby.receive_data(primary.send(beat))
            standby.next_event()
        return time.process_time() - start

    header = struct.Struct("!4sBBHI")
    base = hmac.new(KEY, digestmod="sha256")
    record_bodies = [encode_body(Records(batch)) for batch in batches]
    beat_bodies = [encode_body(beat) for beat in beats]

    def floor(bodies: list[bytes]) -> Callable[[], float]:
        def run() -> float:
            start = time.process_time()
            for body in bodies:
                head = header.pack(b"LLRP", 1, 8, 1, len(body) + 24)
                for _side in (0, 1):  # the sender's MAC and the receiver's check
                    mac = base.copy()
                    mac.update(head)
                    mac.update(body)
                    mac.digest()
            return time.process_time() - start
        return run

    rec_channel = best(channel_records, args.repeat)
    rec_floor = best(floor(record_bodies), args.repeat)
    beat_channel = best(channel_frames, args.repeat)
    beat_floor = best(floor(beat_bodies), args.repeat)
    figures = {
        "records_per_s": round(records / rec_channel), "us_per_record": round(rec_channel / records * 1e6, 3),
        "records_floor_per_s": round(records / rec_floor), "records_ratio": round(rec_channel / rec_floor, 2),
        "frames_per_s": round(args.heartbeats / beat_channel),
        "us_per_frame": round(beat_channel / args.heartbeats * 1e6, 2),
        "frames_floor_per_s": round(args.heartbeats / beat_floor), "frames_ratio": round(beat_channel / beat_floor, 2),
        "batch": args.batch, "size": args.size, "repeat": args.repeat,
    }
    print(f"records: {figures['records_per_s']:,} records/s through the channel ({figures['us_per_record']} us "
          f"each, frames of {args.batch} x {args.size} B), floor {figures['records_floor_per_s']:,}/s, "
          f"ratio {figures['records_ratio']}")
    print(f"frames:  {figures['frames_per_s']:,} HEARTBEAT frames/s ({figures['us_per_frame']} us each), "
          f"floor {figures['frames_floor_per_s']:,}/s, ratio {figures['frames_ratio']}")
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

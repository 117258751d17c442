#!/usr/bin/env python3
"""Benchmark: the pause of a planned ``lifeline switchover`` against the unplanned
failover (kill -9 of the primary), both measured in the same run, in the pair lab.

    sudo .venv/bin/python bench/switchover.py [--repeat 20] [--baseline-repeat 3] [--seed S]

The pair lab (:mod:`lab.pair`, the harness of :mod:`lab.ha_drills`): two
real ``lifeline run`` processes in their own network namespaces, the witness in a third,
the daemon's default lease timings, ``mode = "sync"``, a writer appending the recorded
Binance feed through whichever node accepts (it moves on ``not_primary``). Then
``--repeat`` switchovers back and forth (``standby.switchover``, what ``lifeline
switchover`` calls), each once the store marks the standby synchronous.

Per switchover:
* ``pause_ms``: the writer's last ``ok`` from the old primary to its first ``ok`` from
  the new one (what the engine lives through);
* ``overlap_ms``: how far the old primary's last ``valid_until`` (its role.watch feed)
  reaches past the new primary's first ``primary`` message: 0 when the engine could
  never trade on both (both are CLOCK_MONOTONIC of this one machine);
  ``margin_ms``: the same difference the other way round (> 0);
* at the end, ``lost_acked_records``: records answered ``ok`` by either node that the
  final primary's journal does not hold byte for byte.

Baseline, same run: the ``standby`` drill of :mod:`lab.ha_drills` (kill -9 of
the primary → the writer's first ``ok`` from the other node), ``--baseline-repeat``
times. ``ratio_p50``: the failover's p50 / the switchover's p50.

Human lines go to stdout, progress to stderr; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.core.control_client import ControlClient  # noqa: E402
from lab.drills import percentile  # noqa: E402
from lab.ha_drills import Drill, HaSettings, Node, Repetition, RoleLog, Writer, run_drill  # noqa: E402
from lab.pair import EDGES, REPLICATION_TIMERS, PairLab  # noqa: E402
from lab.procs import free_port, until  # noqa: E402
from lab.replay_engine import feed_lines  # noqa: E402


def feed_overlap_ms(roles: RoleLog, old: str, new: str, epoch: int) -> tuple[float | None, float | None]:
    """(overlap, margin) in ms from the feeds, or (None, None) if a message is missing."""
    with roles._lock:  # the feed list grows in other threads
        feed = list(roles.feed)
    until_ns = [m["valid_until"] for m in feed if m["node"] == old and m.get("epoch") == epoch
                and isinstance(m.get("valid_until"), int)]
    firsts = [m["monotonic_ns"] for m in feed if m["node"] == new and m.get("role") == "primary"
              and int(m.get("epoch", 0)) > epoch]
    if not until_ns or not firsts:
        return None, None
    diff = (min(firsts) - max(until_ns)) / 1e6
    return max(0.0, -diff), diff


class LoopbackLab:
    """The pair lab's process interface on loopback, for when the namespace lab is
    busy (``--where loopback``): same daemons, witness, writer and checks; addresses on
    127.0.0.1 (the lab module's address functions point here while it runs)."""

    def __init__(self) -> None:
        from lab import pair as lab_pair

        self._ports = {name: free_port() for name in (*EDGES, "witness")}
        self._saved = (lab_pair.replication_address, lab_pair.witness_address)
        lab_pair.replication_address = lambda name: f"127.0.0.1:{self._ports[name]}"
        lab_pair.witness_address = lambda: f"127.0.0.1:{self._ports['witness']}"

    def up(self, **_: Any) -> list[str]:
        return []

    def down(self, **_: Any) -> list[str]:
        return []

    def heal(self) -> None:
        pass

    def restore(self) -> None:
        from lab import pair as lab_pair

        lab_pair.replication_address, lab_pair.witness_address = self._saved

    def start_daemon(self, name: str, workdir: Path, config: dict[str, Any]) -> Any:
        from daemon.config import dump_toml
        from lab.procs import DaemonProcess

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "lifeline.toml"
        path.write_text(dump_toml(config))
        daemon = DaemonProcess(config=path, workdir=workdir, watchdog_usec=None)
        daemon.start()
        return daemon

    def start_witness(self, workdir: Path, key_file: Path) -> Any:
        from lab import pair as lab_pair
        from lab.pair import LabProcess

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "daemon.cli", "witness", "--listen", lab_pair.witness_address(), "--state",
                str(workdir / "witness.state"), "--key-file", str(key_file)]
        proc = LabProcess.start("witness", argv, workdir / "witness.log")
        proc.wait_for_line("witness.listening", 15)
        return proc


def switchovers(repeat: int, workdir: Path, log: Any, lab: Any) -> dict[str, Any]:
    lab.up()
    nodes: dict[str, Node] = {}
    roles = RoleLog()
    writer: Writer | None = None
    store = None
    out: dict[str, Any] = {"pause_ms": [], "overlap_ms": [], "margin_ms": [], "switchover_ms": [], "errors": []}
    try:
        from daemon.standby.keys import generate_replication_key, generate_witness_key

        drill = Drill("standby", lab, workdir, HaSettings(repeat=1), random.Random(0), iter(()), log)
        key = workdir / "replication.key"
        generate_replication_key(key)
        drill._witness_key = workdir / "witness.key"
        generate_witness_key(drill._witness_key)
        for name in EDGES:
            other = next(n for n in EDGES if n != name)
            from lab import pair as lab_pair

            settings = {"key_file": str(key), "listen": lab_pair.replication_address(name),
                        "peer": lab_pair.replication_address(other), "mode": "sync",
                        "on_standby_loss": "degrade-to-async", **REPLICATION_TIMERS,
                        "journal": {"fsync": "always", "segment_bytes": 1024 * 1024},
                        "lease": drill._lease(name, None, workdir / name)}
            nodes[name] = Node(name, workdir / name, settings)
        store = drill._start_store(workdir, key, None)
        for node in nodes.values():
            node.start(lab)
        for node in nodes.values():
            node.wait_ready(30)
            roles.follow(node)
        primary, standby = drill._wait_pair(nodes, roles, Repetition(0))
        writer = Writer(nodes, primary.name, feed_lines(endless=True), batch=20, pause=0.005)
        writer.start()
        if not until(lambda: writer.ok_count() >= 50, 10):
            raise RuntimeError(f"the writer got no 50 acknowledgements: {writer.summary()}")
        old, new = primary.name, standby.name
        for i in range(1, repeat + 1):
            if not until(lambda: (nodes[old].try_call("role.status") or {}).get("sync_mark") == new, 15, 0.01):
                out["errors"].append(f"switchover {i}: {new} never marked synchronous")
                break
            time.sleep(random.uniform(0.05, 0.5))  # a random phase of the renewals
            before = len(writer.acknowledged())
            epoch = int(nodes[old].call("role.status")["epoch"])
            started = time.monotonic()
            with ControlClient(nodes[old].socket, timeout=30) as client:
                result = client.call("standby.switchover", {"to": new})
            out["switchover_ms"].append(round((time.monotonic() - started) * 1000, 1))
            if not result.get("ok"):
                out["errors"].append(f"switchover {i}: refused: {result.get('reason')}")
                break
            if not until(lambda: sum(1 for a in writer.acknowledged()[before:] if a.node == new) >= 20, 10, 0.01):
                out["errors"].append(f"switchover {i}: {new} acknowledged nothing within 10 s")
                break
            answers = writer.acknowledged()[before:]
            last_old = max((a.at for a in answers if a.node == old), default=started)
            first_new = min(a.at for a in answers if a.node == new)
            pause = (first_new - last_old) * 1000
            until(lambda: feed_overlap_ms(roles, old, new, epoch)[0] is not None, 5, 0.01)
            overlap, margin = feed_overlap_ms(roles, old, new, epoch)
            out["pause_ms"].append(round(pause, 1))
            out["overlap_ms"].append(round(overlap, 3) if overlap is not None else None)
            out["margin_ms"].append(round(margin, 1) if margin is not None else None)
            log(f"  switchover {i}/{repeat}: {old} -> {new} at epoch {epoch + 1}: pause {pause:.0f} ms, "
                f"overlap {overlap} ms (valid_until ended {margin:.0f} ms before), command {out['switchover_ms'][-1]} ms")
            old, new = new, old
        time.sleep(0.3)
        writer.stop()
        acked = writer.acknowledged()
        journal = {seq: payload for seq, _epoch, payload in nodes[old].records()}
        lost = [a for a in acked if journal.get(a.seq) != a.payload]
        out["acked_records"] = len(acked)
        out["lost_acked_records"] = len(lost)
        out["writer"] = writer.summary()
        if writer.error is not None:
            out["errors"].append(f"the writer failed: {writer.error!r}")
    finally:
        if writer is not None and writer.is_alive():
            writer.stop(5)
        roles.close()
        for node in nodes.values():
            if node.alive():
                node.stop()
            node.close()
        if store is not None:
            store.stop()
        lab.down()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="switchovers, back and forth (default 20)")
    parser.add_argument("--baseline-repeat", type=int, default=3, help="kill -9 failovers (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the pauses between switchovers")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the files here")
    parser.add_argument("--where", choices=("lab", "loopback", "auto"), default="auto",
                        help="the namespace pair lab, loopback, or the lab unless it is busy (default)")
    args = parser.parse_args()
    where = args.where
    if where != "loopback" and os.geteuid() != 0:
        print("bench: the pair lab needs root (network namespaces); --where loopback runs without", file=sys.stderr)
        return 2
    if where == "auto":
        from lab.netns import LabError

        probe = PairLab()
        try:
            probe.lock.acquire(5)
            probe.lock.release()
            where = "lab"
        except LabError:
            where = "loopback"
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    random.seed(seed)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="lifeline-bench-") as tmp:
        base = args.workdir or Path(tmp)
        (base / "switchover").mkdir(parents=True, exist_ok=True)
        log(f"{args.repeat} switchovers under a writer (seed {seed})")
        log(f"where: {where}")
        lab = PairLab() if where == "lab" else LoopbackLab()
        try:
            ours = switchovers(args.repeat, base / "switchover", log, lab)
            log(f"baseline: {args.baseline_repeat} kill -9 failovers (the standby drill)")
            failover = run_drill("standby", base / "failover", HaSettings(repeat=args.baseline_repeat, seed=seed),
                                 progress=log, lab=lab)
        finally:
            if isinstance(lab, LoopbackLab):
                lab.restore()
    pauses = ours["pause_ms"]
    kills = failover.series("promotion_ms")
    figures: dict[str, Any] = {"seed": seed, "where": where, "repeat": args.repeat, "measured": len(pauses)}
    if pauses:
        figures.update(pause_p50_ms=round(percentile(pauses, 50), 1), pause_p95_ms=round(percentile(pauses, 95), 1),
                       pause_max_ms=round(max(pauses), 1))
    figures.update(lost_acked_records=ours.get("lost_acked_records"), acked_records=ours.get("acked_records"),
                   overlap_ms=ours["overlap_ms"], margin_ms=ours["margin_ms"], pause_ms=pauses,
                   command_ms=ours["switchover_ms"])
    if kills:
        figures.update(failover_repeat=len(kills), failover_p50_ms=round(percentile(kills, 50), 1),
                       failover_p95_ms=round(percentile(kills, 95), 1), failover_ms=[round(k, 1) for k in kills],
                       failover_lost_acked_records=failover.lost)
    if pauses and kills:
        figures["ratio_p50"] = round(percentile(kills, 50) / percentile(pauses, 50), 2)
        figures["ratio_p95"] = round(percentile(kills, 95) / percentile(pauses, 95), 2)
    figures["errors"] = ours["errors"] + failover.figures()["errors"]
    figures["ok"] = bool(len(pauses) == args.repeat and ours.get("lost_acked_records") == 0
                         and all(o == 0 for o in ours["overlap_ms"]) and not ours["errors"])
    print(f"planned switchover, {len(pauses)}/{args.repeat} back and forth under a writer "
          f"(last ok on the old primary -> first ok on the new):")
    if pauses:
        print(f"  pause p50 {figures['pause_p50_ms']:.0f} ms, p95 {figures['pause_p95_ms']:.0f} ms, "
              f"max {figures['pause_max_ms']:.0f} ms; lost {figures['lost_acked_records']} of "
              f"{figures['acked_records']} acknowledged; overlap {max((o or 0) for o in ours['overlap_ms']):g} ms max")
    if kills:
        print(f"unplanned failover (kill -9 -> first ok), {len(kills)}: p50 {figures['failover_p50_ms']:.0f} ms, "
              f"p95 {figures['failover_p95_ms']:.0f} ms")
    if "ratio_p50" in figures:
        print(f"  failover / switchover: {figures['ratio_p50']}x at p50, {figures['ratio_p95']}x at p95")
    for error in figures["errors"]:
        print(f"  ERROR: {error.splitlines()[0]}")
    print(f"result: {'PASS' if figures['ok'] else 'FAIL'}")
    print(json.dumps(figures))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

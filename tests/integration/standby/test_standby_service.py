"""The writer API on the real control socket, with a real journal: requests, refusals,
and the primary/standby pair inside one trio run."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.support.cli import cli
from tests.support.ports import free_port

from daemon.app import standby_seams
from daemon.config import parse_config
from daemon.control import ControlServer
from daemon.core.bus import EventBus
from daemon.core.control_client import ControlClient, ControlError
from daemon.standby.service import StandbyService, payloads_from_params

KEY = bytes(range(32))



def config(tmp: Path, name: str, role: str, port: int, *, mode: str = "sync", loss: str = "degrade-to-async") -> Any:
    peer = f'peer = "127.0.0.1:{port}"' if role == "standby" else ""
    listen = port if role == "primary" else free_port()
    return parse_config(f"""
[node]
name = "{name}"
state_dir = "{tmp / name}"
runtime_dir = "{tmp / name / 'run'}"
[standby]
role = "{role}"
key_file = "unused"
listen = "127.0.0.1:{listen}"
{peer}
mode = "{mode}"
on_standby_loss = "{loss}"
heartbeat = "50ms"
peer_timeout = "500ms"
reconnect_max = "100ms"
[standby.journal]
fsync = "never"
""")


async def call(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    def blocking() -> Any:
        with ControlClient(path) as client:
            return client.call(method, params)
    return await trio.to_thread.run_sync(blocking)


async def start(nursery: trio.Nursery, cfg: Any, tmp: Path) -> tuple[StandbyService, Path]:
    service = StandbyService(cfg, EventBus(256), **standby_seams(cfg), key=KEY)
    sock = tmp / f"{cfg.node.name}.sock"
    control = ControlServer(sock, group=None)
    service.register_control(control)
    await nursery.start(control.run)
    await nursery.start(service.run)
    return service, sock


def test_payload_validation() -> None:
    assert payloads_from_params({"payloads": ["a", "é"]}) == [b"a", "é".encode()]
    assert payloads_from_params({"payloads_b64": [base64.b64encode(b"\x00\xff").decode()]}) == [b"\x00\xff"]
    for bad, code in (({}, "bad_request"), ({"payloads": "x"}, "bad_request"), ({"payloads": [1]}, "bad_request"),
                      ({"payloads": []}, "bad_request"), ({"payloads_b64": ["!!"]}, "bad_request"),
                      ({"payloads": ["x" * (1024 * 1024 + 1)]}, "too_large")):
        with pytest.raises(ControlError) as info:
            payloads_from_params(bad)
        assert info.value.code == code


async def test_pair_in_one_run_append_read_and_refusals(tmp_path: Path) -> None:
    port = free_port()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            primary, psock = await start(nursery, config(tmp_path, "edge-a", "primary", port), tmp_path)
            standby, ssock = await start(nursery, config(tmp_path, "edge-b", "standby", port), tmp_path)
            while not primary.replication.in_sync():
                await trio.sleep(0.02)
            result = await call(psock, "journal.append", {"payloads": ["first", "second"]})
            assert [r["status"] for r in result["results"]] == ["ok", "ok"]
            assert [r["seq"] for r in result["results"]] == [1, 2]
            assert {r["durable_on"] for r in result["results"]} == {"primary+standby"}
            binary = await call(psock, "journal.append", {"payloads_b64": [base64.b64encode(b"\xff\x00").decode()]})
            assert binary["results"][0]["seq"] == 3
            # Sync mode: acknowledged means the standby already holds them.
            read = await call(ssock, "journal.read", {"from": 1, "limit": 10})
            assert [r.get("payload") for r in read["records"][:2]] == ["first", "second"]
            assert base64.b64decode(read["records"][2]["payload_b64"]) == b"\xff\x00"  # not UTF-8
            assert read["last_seq"] == 3
            with pytest.raises(ControlError) as info:
                await call(ssock, "journal.append", {"payloads": ["x"]})
            assert info.value.code == "not_primary" and "edge-b" in info.value.message
            with pytest.raises(ControlError) as info:
                await call(psock, "journal.read", {"from": 0})
            assert info.value.code == "bad_request"
            stats = await call(psock, "journal.stats")
            assert stats["role"] == "primary" and stats["appends"] == 3 and stats["in_doubt"] == 0
            # `lifeline journal stats`: a table for people, JSON with --json.
            table = await trio.to_thread.run_sync(cli, "journal", "stats", "--socket", str(psock))
            assert table.returncode == 0, table.stderr
            assert not table.stdout.lstrip().startswith("{")
            rows = dict(line.split(None, 1) for line in table.stdout.splitlines())
            assert rows["role"] == "primary" and rows["appends"] == "3" and rows["journal.last_seq"] == "3"
            assert "None" not in table.stdout and "[" not in table.stdout.replace("[0]", "")
            as_json = await trio.to_thread.run_sync(cli, "journal", "stats", "--json", "--socket", str(psock))
            assert json.loads(as_json.stdout)["appends"] == 3
            status = primary.status()
            assert status.health == "ok" and "journal at seq 3" in status.summary
            assert "0 behind" in standby.status().summary
            families = {f.name: f for f in primary.metrics()}
            assert "lifeline_journal_last_seq" in families
            nursery.cancel_scope.cancel()


async def test_block_mode_without_a_standby_answers_in_doubt(tmp_path: Path) -> None:
    cfg = config(tmp_path, "edge-a", "primary", free_port(), loss="block")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            primary, psock = await start(nursery, cfg, tmp_path)
            result = await call(psock, "journal.append", {"payloads": ["lonely"]})
            (only,) = result["results"]
            assert only["status"] == "in_doubt" and only["seq"] == 1
            assert only["reason"]
            stats = await call(psock, "journal.stats")
            assert stats["in_doubt"] == 1
            assert primary.status().health != "ok"
            nursery.cancel_scope.cancel()


async def test_retention_only_removes_what_the_standby_acknowledged(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import daemon.standby.service as service_module

    monkeypatch.setattr(service_module, "RETENTION_INTERVAL", 0.05)
    port = free_port()
    calls: list[tuple[str, int]] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            primary, psock = await start(nursery, config(tmp_path, "edge-a", "primary", port), tmp_path)
            standby, _ = await start(nursery, config(tmp_path, "edge-b", "standby", port), tmp_path)
            for name, node in (("primary", primary), ("standby", standby)):
                monkeypatch.setattr(node.journal, "remove_segments_through",
                                    lambda seq, name=name: calls.append((name, seq)) or 0)
            while not primary.replication.in_sync():
                await trio.sleep(0.02)
            await call(psock, "journal.append", {"payloads": ["a", "b", "c"]})
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    assert ("primary", 3) in calls and ("standby", 3) in calls
    assert all(seq <= 3 for _, seq in calls)


async def test_a_torn_tail_repaired_at_open_is_published_and_shown(tmp_path: Path) -> None:
    cfg = config(tmp_path, "edge-a", "primary", free_port(), mode="async")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, psock = await start(nursery, cfg, tmp_path)
            await call(psock, "journal.append", {"payloads": ["one", "two", "three"]})
            nursery.cancel_scope.cancel()
    segment = sorted((tmp_path / "edge-a" / "journal").glob("*.seg"))[-1]
    segment.write_bytes(segment.read_bytes()[:-2])  # the last record torn
    bus = EventBus(64)
    events = bus.subscribe("test", kinds={"JournalTailTruncated"})
    service = StandbyService(cfg, bus, **standby_seams(cfg), key=KEY)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            event = events.receive_nowait()
            assert event.records_dropped == 1 and event.file == str(segment)  # type: ignore[attr-defined]
            assert service.details()["repaired_at_open"]
            assert service.journal.last.seq == 2
            nursery.cancel_scope.cancel()


async def test_standby_promote_is_audited_with_its_caller(tmp_path: Path) -> None:
    """The override that may lose acknowledged records names who asked, in the audit
    chain (the role machine itself is faked: only the record of the act is tested)."""
    import json

    class Leadership:
        def operator_promote(self, accept: bool) -> dict[str, Any]:
            return {"accepted": True, "reason": "free lease; override recorded"}

    cfg = config(tmp_path, "edge-b", "standby", free_port())
    service = StandbyService(cfg, EventBus(256), **standby_seams(cfg), key=KEY)
    service.leadership = Leadership()
    sock = tmp_path / "promote.sock"
    control = ControlServer(sock, group=None)
    service.register_control(control)
    async with trio.open_nursery() as nursery:
        await nursery.start(control.run)
        with trio.fail_after(10):
            answer = await call(sock, "standby.promote", {"accept_loss": True})
        nursery.cancel_scope.cancel()
    assert answer["accepted"] is True
    audit = tmp_path / "edge-b" / "recovery" / "audit.jsonl"
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    (entry,) = [e for e in entries if e["kind"] == "standby.promote"]
    assert entry["fields"]["by"]["uid"] == 0 and entry["fields"]["by"]["pid"] > 1
    assert entry["fields"]["accept_loss"] is True and entry["fields"]["node"] == "edge-b"

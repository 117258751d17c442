"""playbook.run against a hostile caller, over the real control socket with the real
recovery service: a name that is a path runs nothing and tells nothing about the file
system; a symbolic link in the directory is refused; repeated refusals write a
bounded number of audit lines (MockClock); an older signed version is refused once a
newer one was verified (not only run), and a (name, version) is pinned to its bytes;
the audit entry of a run names the caller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.config import dump_toml, parse_config
from daemon.control import ControlServer
from daemon.core.bus import EventBus
from recovery.keys import init_keyring, write_keyring
from recovery.service import RecoveryService
from recovery.signing import sign_playbook

CAP = 30


def playbook_text(name: str, version: int = 1, message: str = "hello") -> str:
    return (f'name = "{name}"\nversion = {version}\nexpires = 2099-01-01T00:00:00Z\n'
            f'description = "test {name}"\n\n[[step]]\naction = "notify"\nargs = {{ message = "{message}" }}\n')


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.books = tmp / "playbooks"
        self.outside = tmp / "outside"
        self.state = tmp / "state"
        for d in (self.books, self.outside, self.state):
            d.mkdir()
        self.key = Ed25519PrivateKey.generate()
        self.keyring = tmp / "keyring.toml"
        write_keyring(init_keyring(1, [(self.key.public_key(), "alice")], (), source=str(self.keyring)),
                      self.keyring, create=True)
        self.socket = tmp / "control.sock"

    def write(self, directory: Path, name: str, version: int = 1, message: str = "hello") -> Path:
        path = directory / f"{name}.toml"
        path.write_text(playbook_text(name, version, message))
        path.with_name(path.name + ".sig").unlink(missing_ok=True)
        sign_playbook(path, self.key)
        return path

    def config(self) -> Any:
        return parse_config(dump_toml({
            "node": {"name": "edge-a", "state_dir": str(self.state), "runtime_dir": str(self.tmp / "run")},
            "recovery": {"playbooks": str(self.books), "keyring": str(self.keyring)},
        }))

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "recovery" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


async def start(nursery: trio.Nursery, site: Site) -> tuple[RecoveryService, ControlServer]:
    bus = EventBus(256)
    service = RecoveryService(site.config(), bus)
    control = ControlServer(site.socket, group=None)
    service.register_control(control)
    await nursery.start(control.run)
    await nursery.start(service.run)
    return service, control


async def call(site: Site, method: str, **params: Any) -> dict[str, Any]:
    stream = await trio.open_unix_socket(str(site.socket))
    async with stream:
        await stream.send_all(json.dumps({"id": 1, "method": method, "params": params}).encode() + b"\n")
        data = b""
        while b"\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
    return json.loads(data.split(b"\n")[0])


async def test_a_path_is_not_a_playbook_name(nursery: trio.Nursery, site: Site) -> None:
    with trio.fail_after(CAP):
        site.write(site.books, "fibre-lost")
        site.write(site.outside, "evil")
        service, _ = await start(nursery, site)
        answers = {}
        for name in ("../outside/evil", str(site.outside / "evil"), "../outside/missing", "/etc/passwd",
                     "Fibre-Lost", "evil", "fibre-lost/../fibre-lost"):
            answers[name] = await call(site, "playbook.run", name=name, dry_run=True)
        for name, reply in answers.items():
            assert reply["error"]["code"] == "unknown_playbook", (name, reply)
            # No oracle: the same answer whether the file exists or not, and no path echoed.
            assert "outside" not in reply["error"]["message"] and "passwd" not in reply["error"]["message"]
        assert answers["../outside/evil"]["error"]["message"] == answers["../outside/missing"]["error"]["message"]
        assert "fibre-lost" in answers["evil"]["error"]["message"]  # the verified ones are listed
        assert service.runs == 0
        ok = await call(site, "playbook.run", name="fibre-lost", dry_run=True)
        assert ok["ok"], ok


async def test_removing_a_playbook_disables_it(nursery: trio.Nursery, site: Site) -> None:
    with trio.fail_after(CAP):
        site.write(site.books, "fibre-lost")
        site.write(site.books, "old-one")
        await start(nursery, site)
        (site.books / "old-one.toml").rename(site.outside / "old-one.toml")
        (site.books / "old-one.toml.sig").rename(site.outside / "old-one.toml.sig")
        await call(site, "playbook.reload")
        for name in ("old-one", "../outside/old-one", str(site.outside / "old-one")):
            reply = await call(site, "playbook.run", name=name, dry_run=True)
            assert reply["error"]["code"] == "unknown_playbook", (name, reply)


async def test_a_symlinked_playbook_is_refused(nursery: trio.Nursery, site: Site) -> None:
    with trio.fail_after(CAP):
        site.write(site.outside, "linked")
        (site.books / "linked.toml").symlink_to(site.outside / "linked.toml")
        (site.books / "linked.toml.sig").symlink_to(site.outside / "linked.toml.sig")
        service, _ = await start(nursery, site)
        assert "linked" not in service.playbooks
        assert "symbolic link" in service.refused["linked"]
        reply = await call(site, "playbook.run", name="linked", dry_run=True)
        assert reply["error"]["code"] == "refused" and "symbolic link" in reply["error"]["message"]


async def test_repeated_refusals_are_coalesced(nursery: trio.Nursery, site: Site) -> None:
    """300 identical refused calls (a few seconds, well inside the 60 s window): one
    audit line. The window's arithmetic is tested in tests/unit/recovery/test_refusal_coalescer.py."""
    with trio.fail_after(CAP):
        path = site.write(site.books, "tampered")
        service, _ = await start(nursery, site)
        path.write_text(path.read_text().replace("hello", "hellO"))  # changed after signing
        before = len(site.audit())
        for _ in range(300):
            reply = await call(site, "playbook.run", name="tampered")
            assert reply["error"]["code"] == "refused"
        refusals = [e for e in site.audit()[before:] if e["kind"] == "verify.refused"]
        assert len(refusals) == 1, f"{len(refusals)} audit lines for 300 identical refusals"
        assert refusals[0]["fields"]["by"]["uid"] == 0
        assert service.refusals._keys[next(iter(service.refusals._keys))][1] == 299


async def test_an_older_version_is_refused_once_a_newer_was_verified(nursery: trio.Nursery, site: Site) -> None:
    """v2 verified at start but never run: putting the signed v1 back must not work."""
    with trio.fail_after(CAP):
        old = site.tmp / "v1"
        old.mkdir()
        site.write(old, "fibre-lost", version=1)
        site.write(site.books, "fibre-lost", version=2)
        service, _ = await start(nursery, site)
        assert service.playbooks["fibre-lost"].version == 2
        for suffix in (".toml", ".toml.sig"):
            (site.books / f"fibre-lost{suffix}").write_bytes((old / f"fibre-lost{suffix}").read_bytes())
        reply = await call(site, "playbook.run", name="fibre-lost", dry_run=True)
        assert reply["error"]["code"] == "refused"
        assert "rollback" in reply["error"]["message"] and "already verified" in reply["error"]["message"]


async def test_a_version_is_pinned_to_its_bytes(nursery: trio.Nursery, site: Site) -> None:
    with trio.fail_after(CAP):
        site.write(site.books, "fibre-lost", version=3, message="first")
        await start(nursery, site)
        assert (await call(site, "playbook.run", name="fibre-lost", dry_run=True))["ok"]
        site.write(site.books, "fibre-lost", version=3, message="other bytes, validly signed")
        reply = await call(site, "playbook.run", name="fibre-lost", dry_run=True)
        assert reply["error"]["code"] == "refused" and "pinned" in reply["error"]["message"]
        site.write(site.books, "fibre-lost", version=4, message="other bytes, validly signed")
        assert (await call(site, "playbook.run", name="fibre-lost", dry_run=True))["ok"]


async def test_a_run_names_its_caller_in_the_audit_log(nursery: trio.Nursery, site: Site) -> None:
    with trio.fail_after(CAP):
        site.write(site.books, "fibre-lost")
        await start(nursery, site)
        reply = await call(site, "playbook.run", name="fibre-lost")
        assert reply["ok"], reply
        started = [e for e in site.audit() if e["kind"] == "run.started"]
        assert started and started[-1]["fields"]["by"]["uid"] == 0 and started[-1]["fields"]["by"]["pid"] > 1
        steps = [e for e in site.audit() if e["kind"] == "step"]
        assert all(e["fields"]["by"]["uid"] == 0 for e in steps)

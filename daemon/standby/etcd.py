"""The leader lease in etcd v3, over etcd's JSON gateway (Patroni's ``dcs/etcd3.py`` idea).

Keys, under ``{prefix}{cluster}/``:

``leader``
    the holder's node name, bound to an etcd lease of ``ceil(ttl)`` seconds: etcd deletes
    it when the lease expires on etcd's clock (or is revoked).
``last``
    ``{"holder": NODE}``, *not* bound to a lease, written in the same transaction as
    ``leader`` on every grant. Its ``mod_revision`` **is the epoch**: the revision of the
    granting transaction, which is also ``leader``'s ``create_revision`` while that key
    lives. It stays after the lease expires, so the epoch and the last holder survive
    (0 and nobody when never granted). Revisions only grow and are persisted before etcd
    answers, so epochs never go backwards, not even across an etcd restart. They grow
    by more than one per grant (every write bumps the revision); the role machine only
    needs each grant's epoch to exceed every epoch seen before.
``sync``
    the synchronous standby's name (empty: none), written only by the live holder.
``members/NODE``
    ``{"epoch": E, "seq": S, "seen_epoch": N}``: a node's journal position, reported
    while not primary (no lease).

Requests (all ``POST``, JSON bodies, keys and values base64, int64 fields as strings;
etcd leaves out fields at their zero value, e.g. ``"succeeded"`` of a refused txn, an
empty ``"value"``, ``"TTL"`` of a gone lease):

* :meth:`EtcdLeaseStore.acquire`: ``/v3/lease/grant``, then one ``/v3/kv/txn``:
  ``leader`` CREATE == 0 (absent) and ``last`` MOD == ``expected_epoch`` → put ``leader``
  (with the lease) and ``last``; the epoch is the txn's header revision. Refused: the
  new lease is revoked and :class:`LeaseConflict` carries the state the txn read back in
  its failure branch (same revision as the refused compare). A txn resent to another
  endpoint after a connection failure is recognised by its fresh lease id in ``leader``.
* :meth:`EtcdLeaseStore.renew`: ``/v3/lease/keepalive`` on the held lease (TTL missing
  or 0: the lease is gone, :class:`LeaseLost`), then a linearizable range of ``leader``
  that must still be this node's, at ``create_revision == epoch``, on that lease.
* :meth:`EtcdLeaseStore.release`: txn ``leader`` CREATE == epoch and VALUE == node →
  delete it; then ``/v3/lease/revoke``. :meth:`EtcdLeaseStore.set_sync_mark`: the same
  compare → put ``sync``. :meth:`EtcdLeaseStore.report`: a plain ``/v3/kv/put``.
* :meth:`EtcdLeaseStore.read`: one linearizable ``/v3/kv/range`` over the prefix, and
  ``/v3/lease/timetolive`` of ``leader``'s lease.

Timing, and why renewals stay safe:

* etcd counts a lease's TTL on its **leader's** clock from when that leader handled the
  grant or keepalive; the role machine computes its fence deadline from when it *sent*
  the request, so a keepalive answered late is still safe.
* When etcd's own leader changes, the new leader re-extends every lease by its full TTL
  (it cannot know the last renewal). That only delays the next holder: the old holder
  fences on its own deadline, and a keepalive reaching etcd after the lease expired on
  the leader's clock is refused (TTL 0), never revives it.
* A keepalive answered by a deposed etcd leader that does not know it yet would extend a
  lease only on that member's clock (fixed upstream by a leadership check on renew in
  later releases); the linearizable read that follows the keepalive needs a quorum, so
  such a renewal fails (:class:`LeaseUnavailable`) instead of extending the fence.
* etcd releases before the early-2024 fix of etcd-io/etcd#15247 (backported to 3.4 and
  3.5; Debian's 3.4.23 predates it) let a stalled old leader revoke leases early, which
  no client can guard against: run a fixed release in production.
* ``/v3/lease/timetolive`` answers whole seconds, rounded down (a lease with 0.9 s left
  says 0). :meth:`read` reports that lower bound, but never less than
  :data:`MIN_LIVE_TTL` while ``leader`` exists, so a live lease never reads as free; the
  standby just looks again sooner. etcd notices expiry on a 500 ms tick, so a lease
  really goes away between ttl and ttl + 0.5 s after its last renewal.
* etcd raises a TTL below its minimum (``1.5 * election timeout``, rounded up to whole
  seconds: 2 s with the default timers) silently; the grant's answer is logged when it
  differs from what was asked. A store ttl longer than the client's is safe.

Every public call gives up after ``timeout`` seconds in all (:class:`LeaseUnavailable`),
trying the endpoints in order from the last one that answered, moving on after a
connection failure, a 5xx answer, or a timeout (connecting to one endpoint may take at
most ``timeout / len(endpoints)``). Every request here may safely be sent twice.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import httpx
import trio

from daemon.log import get_logger
from daemon.standby import Position
from daemon.standby.lease import (
    Grant,
    LeaseConflict,
    LeaseLost,
    LeaseState,
    LeaseStore,
    LeaseUnavailable,
    Member,
)

log = get_logger("etcd")

#: The least ``ttl_remaining`` :meth:`EtcdLeaseStore.read` reports for a lease that still
#: exists (etcd's time-to-live answer is rounded down to whole seconds).
MIN_LIVE_TTL = 0.1

#: gRPC status code etcd uses for "requested lease not found".
_GRPC_NOT_FOUND = 5


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _int(obj: dict[str, Any] | None, field: str) -> int:
    """An int64 field as etcd's gateway sends it: a JSON string, left out when 0."""
    if not obj:
        return 0
    value = obj.get(field)
    return int(value) if value not in (None, "") else 0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Refused(Exception):
    """etcd answered with an error (4xx: the request itself was refused, e.g. "requested
    lease not found"). Methods decide what it means for the lease."""

    def __init__(self, url: str, status: int, code: int, message: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {message} (grpc code {code})")
        self.url = url
        self.status = status
        self.code = code
        self.message = message


class EtcdLeaseStore(LeaseStore):
    """The lease of ``cluster`` in the etcd cluster at ``endpoints`` (``http://host:port``;
    a bare ``host:port`` means http). ``ttl`` is the client's lease ttl in seconds (etcd
    gets ``ceil(ttl)``); ``timeout`` bounds every call. ``node`` is this process's node
    name, used in log lines."""

    def __init__(self, endpoints: list[str], cluster: str, node: str, ttl: float, timeout: float,
                 prefix: str = "/lifeline/") -> None:
        if not endpoints:
            raise ValueError("etcd lease store: no endpoints given")
        if not cluster or "/" in cluster:
            raise ValueError(f"etcd lease store: cluster name must be non-empty without '/', found {cluster!r}")
        if not ttl > 0 or not timeout > 0:
            raise ValueError(f"etcd lease store: ttl and timeout must be positive, found {ttl!r} and {timeout!r}")
        self.endpoints = [(e if "://" in e else f"http://{e}").rstrip("/") for e in endpoints]
        self.cluster = cluster
        self.node = node
        self.ttl = ttl
        self.timeout = timeout
        self.store_ttl = max(1, math.ceil(ttl))
        self.base = f"{prefix}{cluster}/"
        self._leader_key = self.base + "leader"
        self._last_key = self.base + "last"
        self._sync_key = self.base + "sync"
        self._members_prefix = self.base + "members/"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=timeout / len(self.endpoints)),
            trust_env=False,  # never through an HTTP proxy from the environment
            headers={"Content-Type": "application/json"},
        )
        self._current = 0  # index of the endpoint that answered last
        self._held: tuple[str, int, int] | None = None  # (node, epoch, etcd lease id) from our last grant
        self._ttl_warned = False

    @property
    def endpoint(self) -> str:
        """The endpoint the next request goes to first."""
        return self.endpoints[self._current]

    # ------------------------------------------------------------------ LeaseStore

    async def read(self) -> LeaseState:
        deadline = self._deadline()
        data = await self._post("/v3/kv/range", self._prefix_range(), deadline, "read the lease")
        return await self._state(data.get("kvs") or [], deadline, "read the lease")

    async def acquire(self, node: str, expected_epoch: int) -> Grant:
        deadline = self._deadline()
        what = f"acquire for {node} at expected epoch {expected_epoch}"
        try:
            granted = await self._post("/v3/lease/grant", {"TTL": str(self.store_ttl)}, deadline, what)
        except _Refused as e:
            raise LeaseUnavailable(f"etcd {what}: lease grant refused: {e}") from None
        lease_id = _int(granted, "ID")
        if not lease_id:
            raise LeaseUnavailable(f"etcd {what}: lease grant answered no lease id: {granted}")
        self._check_granted_ttl(_int(granted, "TTL"))
        txn = {
            "compare": [
                {"key": _b64(self._leader_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                {"key": _b64(self._last_key), "target": "MOD", "result": "EQUAL",
                 "mod_revision": str(expected_epoch)},
            ],
            "success": [
                {"request_put": {"key": _b64(self._leader_key), "value": _b64(node), "lease": str(lease_id)}},
                {"request_put": {"key": _b64(self._last_key), "value": _b64(json.dumps({"holder": node}))}},
            ],
            "failure": [{"request_range": self._prefix_range()}],
        }
        try:
            answer = await self._post("/v3/kv/txn", txn, deadline, what)
        except _Refused as e:
            # "requested lease not found": it expired between grant and txn (timeout >= ttl?)
            raise LeaseUnavailable(f"etcd {what}: txn refused: {e}") from None
        if answer.get("succeeded"):
            epoch = _int(answer.get("header"), "revision")
            self._held = (node, epoch, lease_id)
            log.info("lease.acquired", node=node, epoch=epoch, expected_epoch=expected_epoch, lease=f"{lease_id:x}",
                     ttl=self.store_ttl, endpoint=self.endpoint)
            return Grant(epoch)
        kvs = self._txn_range_kvs(answer)
        leader = self._find(kvs, self._leader_key)
        if leader is not None and _int(leader, "lease") == lease_id:
            # Our own txn, sent to an endpoint that failed before answering, took
            # effect; this resend to the next endpoint saw it. The lease id is ours alone.
            epoch = _int(leader, "create_revision")
            self._held = (node, epoch, lease_id)
            log.info("lease.acquired", node=node, epoch=epoch, expected_epoch=expected_epoch, lease=f"{lease_id:x}",
                     ttl=self.store_ttl, endpoint=self.endpoint, resent=True)
            return Grant(epoch)
        # Refused: give the unused lease back (best effort: unrevoked, it just expires).
        try:
            await self._post("/v3/lease/revoke", {"ID": str(lease_id)}, deadline, f"{what}: revoke unused lease")
        except (LeaseUnavailable, _Refused) as e:
            log.warning("lease.revoke_failed", node=node, lease=f"{lease_id:x}", error=str(e))
        state: LeaseState | None
        try:
            state = await self._state(kvs, deadline, what)
        except (LeaseUnavailable, _Refused):
            state = None
        why = self._conflict_reason(state, expected_epoch)
        log.info("lease.conflict", node=node, expected_epoch=expected_epoch, reason=why)
        raise LeaseConflict(f"etcd refused the lease to {node} at expected epoch {expected_epoch}: {why}", state)

    async def renew(self, node: str, epoch: int) -> Grant:
        deadline = self._deadline()
        what = f"renew for {node} at epoch {epoch}"
        lease_id = self._held[2] if self._held is not None and self._held[:2] == (node, epoch) else 0
        if not lease_id:
            # Not granted through this object (a restart, another instance): the leader
            # key names the lease, if it is still ours.
            lease_id = self._check_leader(await self._leader_kv(deadline, what), node, epoch, None)
        try:
            answer = await self._post("/v3/lease/keepalive", {"ID": str(lease_id)}, deadline, what)
        except _Refused as e:
            if e.code == _GRPC_NOT_FOUND:
                self._forget(lease_id)
                raise LeaseLost(f"etcd {what}: lease {lease_id:x} not found: {e.message}") from None
            raise LeaseUnavailable(f"etcd {what}: keepalive refused: {e}") from None
        if _int(answer, "TTL") <= 0:
            self._forget(lease_id)
            log.info("lease.lost", node=node, epoch=epoch, lease=f"{lease_id:x}", reason="keepalive answered TTL 0")
            raise LeaseLost(f"etcd {what}: lease {lease_id:x} has expired or was revoked (keepalive answered TTL 0)")
        self._check_leader(await self._leader_kv(deadline, what), node, epoch, lease_id)
        self._held = (node, epoch, lease_id)
        log.debug("lease.renewed", node=node, epoch=epoch, ttl=_int(answer, "TTL"), endpoint=self.endpoint)
        return Grant(epoch)

    async def release(self, node: str, epoch: int) -> None:
        deadline = self._deadline()
        what = f"release for {node} at epoch {epoch}"
        txn = {
            "compare": self._holder_compare(node, epoch),
            "success": [
                {"request_range": {"key": _b64(self._leader_key)}},
                {"request_delete_range": {"key": _b64(self._leader_key)}},
            ],
        }
        answer = await self._unrefused(self._post("/v3/kv/txn", txn, deadline, what), what)
        if self._held is not None and self._held[:2] == (node, epoch):
            self._held = None
        if not answer.get("succeeded"):
            log.debug("lease.release_noop", node=node, epoch=epoch, reason="not the holder at that epoch")
            return
        leader = self._find(self._txn_range_kvs(answer), self._leader_key)
        lease_id = _int(leader, "lease")
        log.info("lease.released", node=node, epoch=epoch, lease=f"{lease_id:x}")
        if lease_id:
            try:
                await self._post("/v3/lease/revoke", {"ID": str(lease_id)}, deadline, f"{what}: revoke")
            except (LeaseUnavailable, _Refused) as e:
                # The leader key is gone already; the lease itself just expires.
                log.warning("lease.revoke_failed", node=node, lease=f"{lease_id:x}", error=str(e))

    async def set_sync_mark(self, node: str, epoch: int, sync_node: str | None) -> None:
        deadline = self._deadline()
        what = f"sync mark {sync_node or '(none)'} by {node} at epoch {epoch}"
        txn = {
            "compare": self._holder_compare(node, epoch),
            "success": [{"request_put": {"key": _b64(self._sync_key), "value": _b64(sync_node or "")}}],
        }
        answer = await self._unrefused(self._post("/v3/kv/txn", txn, deadline, what), what)
        if not answer.get("succeeded"):
            raise LeaseLost(f"etcd {what}: refused, {node} does not hold the lease at epoch {epoch}")
        log.info("lease.sync_mark", node=node, epoch=epoch, sync_node=sync_node)

    async def report(self, node: str, position: Position, seen_epoch: int) -> None:
        deadline = self._deadline()
        what = f"report of {node}"
        value = json.dumps({"epoch": position.epoch, "seq": position.seq, "seen_epoch": seen_epoch})
        body = {"key": _b64(self._members_prefix + node), "value": _b64(value)}
        await self._unrefused(self._post("/v3/kv/put", body, deadline, what), what)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------------ state

    async def _state(self, kvs: list[dict[str, Any]], deadline: float, what: str) -> LeaseState:
        leader = last = sync = None
        members: list[Member] = []
        for kv in kvs:
            key = _unb64(kv.get("key")).decode("utf-8", "replace")
            if key == self._leader_key:
                leader = kv
            elif key == self._last_key:
                last = kv
            elif key == self._sync_key:
                sync = kv
            elif key.startswith(self._members_prefix):
                member = self._parse_member(key[len(self._members_prefix):], kv)
                if member is not None:
                    members.append(member)
        epoch = _int(last, "mod_revision")
        last_holder = None
        if last is not None:
            try:
                last_holder = json.loads(_unb64(last.get("value"))).get("holder")
            except (ValueError, AttributeError):
                log.warning("key.unreadable", key=self._last_key, value=_unb64(last.get("value")))
        sync_node = _unb64(sync.get("value")).decode() if sync else ""
        holder: str | None = None
        ttl_remaining = 0.0
        if leader is not None:
            name = _unb64(leader.get("value")).decode()
            lease_id = _int(leader, "lease")
            if lease_id:
                ttl = await self._time_to_live(lease_id, deadline, what)
                if ttl >= 0:  # -1: expired or revoked since the range
                    holder, ttl_remaining = name, max(float(ttl), MIN_LIVE_TTL)
            else:
                log.warning("leader.unleased", key=self._leader_key, holder=name,
                            hint="the leader key is not bound to a lease: it never expires; delete it by hand")
                holder, ttl_remaining = name, float(self.store_ttl)
            if holder is not None and _int(leader, "create_revision") != epoch:
                log.warning("leader.epoch_mismatch", holder=holder, create_revision=_int(leader, "create_revision"),
                            epoch=epoch)
        return LeaseState(holder=holder, epoch=epoch, ttl_remaining=ttl_remaining, sync_node=sync_node or None,
                          last_holder=last_holder, members=tuple(sorted(members, key=lambda m: m.node)))

    def _parse_member(self, node: str, kv: dict[str, Any]) -> Member | None:
        raw = _unb64(kv.get("value"))
        try:
            doc = json.loads(raw)
            return Member(node=node, position=Position(int(doc["epoch"]), int(doc["seq"])),
                          seen_epoch=int(doc["seen_epoch"]))
        except (ValueError, KeyError, TypeError):
            log.warning("member.unreadable", node=node, value=raw)
            return None

    async def _time_to_live(self, lease_id: int, deadline: float, what: str) -> int:
        """Seconds left (rounded down), or -1 when the lease is gone."""
        try:
            answer = await self._post("/v3/lease/timetolive", {"ID": str(lease_id)}, deadline, what)
        except _Refused as e:
            if e.code == _GRPC_NOT_FOUND:
                return -1
            raise LeaseUnavailable(f"etcd {what}: lease time-to-live refused: {e}") from None
        return _int(answer, "TTL") if "TTL" in answer else 0

    async def _leader_kv(self, deadline: float, what: str) -> dict[str, Any] | None:
        body = {"key": _b64(self._leader_key), "serializable": False}
        answer = await self._unrefused(self._post("/v3/kv/range", body, deadline, what), what)
        kvs = answer.get("kvs") or []
        return kvs[0] if kvs else None

    def _check_leader(self, leader: dict[str, Any] | None, node: str, epoch: int, lease_id: int | None) -> int:
        """The leader key's lease id if ``node`` holds it at ``epoch`` (on ``lease_id``
        when given); :class:`LeaseLost` saying why not otherwise."""
        problem = None
        if leader is None:
            problem = "the leader key is gone (lease expired or released)"
        else:
            holder = _unb64(leader.get("value")).decode()
            created = _int(leader, "create_revision")
            if holder != node:
                problem = f"{holder} holds the lease at epoch {created}"
            elif created != epoch:
                problem = f"the lease was granted again at epoch {created}"
            elif lease_id is not None and _int(leader, "lease") != lease_id:
                problem = f"the leader key is bound to another etcd lease ({_int(leader, 'lease'):x})"
        if problem is not None:
            if lease_id is not None:
                self._forget(lease_id)
            log.info("lease.lost", node=node, epoch=epoch, reason=problem)
            raise LeaseLost(f"etcd: {node} no longer holds the lease at epoch {epoch}: {problem}")
        assert leader is not None
        return _int(leader, "lease")

    @staticmethod
    def _conflict_reason(state: LeaseState | None, expected_epoch: int) -> str:
        if state is None:
            return "compare-and-set failed (the state could not be read back)"
        if state.holder is not None:
            return f"{state.holder} holds it at epoch {state.epoch} ({state.ttl_remaining:g}s left)"
        if state.epoch != expected_epoch:
            return f"the epoch is {state.epoch}, not {expected_epoch}"
        return f"the leader key still existed at epoch {state.epoch} (its lease just ran out)"

    def _check_granted_ttl(self, granted: int) -> None:
        if granted != self.store_ttl and not self._ttl_warned:
            self._ttl_warned = True
            log.warning("lease.ttl_adjusted", asked=self.store_ttl, granted=granted,
                        hint="etcd's minimum lease TTL is 1.5 x its election timeout, rounded up to seconds")

    def _forget(self, lease_id: int) -> None:
        if self._held is not None and self._held[2] == lease_id:
            self._held = None

    # ------------------------------------------------------------------ requests

    def _deadline(self) -> float:
        return trio.current_time() + self.timeout

    def _prefix_range(self) -> dict[str, Any]:
        base = self.base.encode()
        return {"key": _b64(base), "range_end": _b64(_prefix_end(base)), "serializable": False}

    def _holder_compare(self, node: str, epoch: int) -> list[dict[str, Any]]:
        return [
            {"key": _b64(self._leader_key), "target": "CREATE", "result": "EQUAL", "create_revision": str(epoch)},
            {"key": _b64(self._leader_key), "target": "VALUE", "result": "EQUAL", "value": _b64(node)},
        ]

    @staticmethod
    def _find(kvs: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
        want = _b64(key)
        return next((kv for kv in kvs if kv.get("key") == want), None)

    @staticmethod
    def _txn_range_kvs(answer: dict[str, Any]) -> list[dict[str, Any]]:
        for response in answer.get("responses") or []:
            if "response_range" in response:
                return response["response_range"].get("kvs") or []
        return []

    @staticmethod
    async def _unrefused(request: Any, what: str) -> dict[str, Any]:
        try:
            return await request
        except _Refused as e:
            raise LeaseUnavailable(f"etcd {what}: refused: {e}") from None

    async def _post(self, path: str, body: dict[str, Any], deadline: float, what: str) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers, starting with the
        one that answered last; give up at ``deadline``. Returns etcd's answer (the
        ``result`` of a streamed answer). :class:`_Refused` for a 4xx answer;
        :class:`LeaseUnavailable` when no endpoint answered in time."""
        n = len(self.endpoints)
        start = self._current
        failures: list[str] = []
        for i in range(n):
            index = (start + i) % n
            url = self.endpoints[index] + path
            response = None
            with trio.move_on_at(deadline):
                try:
                    response = await self._client.post(url, content=json.dumps(body))
                except httpx.TransportError as e:
                    failures.append(f"{url}: {_describe(e)}")
            if response is None:
                self._current = (index + 1) % n  # next call starts with the next endpoint
                if trio.current_time() >= deadline:
                    failures.append(f"{url}: no answer within the {self.timeout:g}s timeout")
                    break
                continue
            status, answer = self._decode(response)
            if status >= 500 or answer is None:
                failures.append(f"{url}: HTTP {status}: {self._error_message(answer, response)}")
                self._current = (index + 1) % n
                continue
            if status != 200:
                raise _Refused(url, status, _int(answer, "code"), self._error_message(answer, response))
            if index != start:
                log.warning("endpoint.failover", path=path, to=self.endpoints[index], failed="; ".join(failures))
            self._current = index
            return answer
        raise LeaseUnavailable(f"etcd {what}: " + "; ".join(failures))

    @staticmethod
    def _decode(response: httpx.Response) -> tuple[int, dict[str, Any] | None]:
        """HTTP status and JSON answer. A streamed answer (``/v3/lease/keepalive``) is
        one JSON line per request message, ``{"result": ...}`` or ``{"error": ...}``."""
        status = response.status_code
        text = response.text.strip()
        if not text:
            return status, None
        try:
            answer = json.loads(text.splitlines()[0])
        except ValueError:
            return status, None
        if not isinstance(answer, dict):
            return status, None
        if isinstance(answer.get("result"), dict):
            return status, answer["result"]
        error = answer.get("error")
        if isinstance(error, dict):  # an error inside a stream: its own status and code
            return int(error.get("http_code") or 500), {"code": error.get("grpc_code", 0),
                                                       "message": error.get("message", "")}
        return status, answer

    @staticmethod
    def _error_message(answer: dict[str, Any] | None, response: httpx.Response) -> str:
        if answer and (answer.get("message") or answer.get("error")):
            return str(answer.get("message") or answer.get("error"))
        return response.text.strip()[:200] or response.reason_phrase or "no message"

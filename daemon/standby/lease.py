"""The leader lease: what a lease store must guarantee, and what it answers.

One lease per cluster: a holder, a fencing **epoch** and a time to live. The role
machine (:mod:`daemon.standby.roles`) decides; a :class:`LeaseStore` backend carries
its requests to the store and reports the answers. Backends, one module each (Patroni's
``dcs/`` layout): the built-in witness (:mod:`daemon.standby.witness`, its protocol in
:mod:`daemon.standby.witness_protocol`), etcd v3 (:mod:`daemon.standby.etcd`).

Duties of every backend (the safety argument of the role machine rests on them):

* **Compare-and-set.** :meth:`LeaseStore.acquire` succeeds only when the lease is free
  (never granted, released, or expired *on the store's own clock*) **and** the store's
  epoch equals ``expected_epoch``; it then grants the lease at ``expected_epoch + 1``.
  Two concurrent acquirers with the same expected epoch: at most one wins.
* **Epochs never go backwards**, not even across a restart of the store: the epoch is
  persisted durably before a grant is answered. After a restart the store treats the
  last holder's lease as live for a full ``ttl`` (it cannot know when it was last
  renewed), so nobody can take it sooner than its holder would have fenced.
* **TTL counted from when the store handled the request.** A grant or renewal is valid
  for ``ttl`` seconds of the store's clock from the moment the store processed it,
  which is after the client sent it: that is why the client's self-fence deadline is
  computed from the time it *sent* the request (see ``roles``). A renewal that reaches
  the store after the lease expired fails with :class:`LeaseLost`, never revives it.
* **Timeouts.** Each call gives up after the ``timeout`` the backend was built with
  (the config's ``retry_timeout``) and raises :class:`LeaseUnavailable`; the caller
  retries on its own schedule. A call that timed out may still have taken effect on
  the store: the role machine's deadlines are safe either way.
* **Reads are linearizable**: :meth:`read` reflects every grant answered before it.

Errors: :class:`LeaseUnavailable` (could not reach the store, or no answer in time:
transient), :class:`LeaseConflict` (compare-and-set refused: someone holds it, or the
epoch moved on), :class:`LeaseLost` (a renewal refused: this node no longer holds
the lease at that epoch). All derive from :class:`LeaseError`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from daemon.standby import Position, StandbyError


#: The longest maintenance pause (``lifeline pause --for``): nobody forgets one for days.
MAX_PAUSE = 24 * 3600.0


def check_pause_seconds(seconds: object) -> float:
    """A pause's length in seconds, or ValueError naming the bound."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_PAUSE:
        raise ValueError(f"a pause lasts 0 (resume) to {MAX_PAUSE:g} seconds (24h), found {seconds!r}")
    return float(seconds)


class LeaseError(StandbyError):
    """Base of the lease errors."""


class LeaseUnavailable(LeaseError):
    """The store could not be reached or did not answer within the timeout."""


class LeaseConflict(LeaseError):
    """An acquire was refused: the lease is held, or the store's epoch is not the one
    expected. ``state`` is what the store reported, when it did."""

    def __init__(self, message: str, state: "LeaseState | None" = None) -> None:
        super().__init__(message)
        self.state = state


class LeaseLost(LeaseError):
    """A renewal was refused: the caller no longer holds the lease at that epoch."""


@dataclass(frozen=True)
class Member:
    """A node's journal position as it reported it to the store while *not* primary
    (Patroni's ``members/`` keys). ``seen_epoch`` is the lease epoch the node had seen
    when it reported: the report speaks for the node's journal only while the store's
    epoch is still ``seen_epoch`` (a later grant, possibly to that very node, makes it
    stale). The cold-start rule compares journals with it."""

    node: str
    position: Position
    seen_epoch: int


@dataclass(frozen=True)
class LeaseState:
    """The lease as the store saw it when it answered.

    ``holder`` is the node holding a live lease, ``None`` when it is free (never
    granted, released or expired). ``epoch`` is the last epoch granted (0: never).
    ``ttl_remaining`` is the store's estimate, in seconds, of the live lease's
    remaining life (0 when free). ``sync_node`` is the standby the primary marked as
    synchronous (holds every acknowledged record), or ``None``. ``last_holder`` is who
    was granted ``epoch`` (kept after expiry, so the store can tell the last primary).
    """

    holder: str | None
    epoch: int
    ttl_remaining: float
    sync_node: str | None = None
    last_holder: str | None = None
    members: tuple[Member, ...] = ()
    #: Maintenance mode (``lifeline pause``): seconds it still lasts (0: not paused), who set it.
    paused_for: float = 0.0
    paused_by: str | None = None

    @property
    def free(self) -> bool:
        return self.holder is None or self.ttl_remaining <= 0

    def peer_position(self, node: str) -> Position | None:
        """The journal position another node reported while not primary, if it still
        speaks for that node's journal (reported at the current epoch); else None."""
        for member in self.members:
            if member.node != node and member.seen_epoch == self.epoch:
                return member.position
        return None


@dataclass(frozen=True)
class Grant:
    """A successful acquire or renewal: the epoch held."""

    epoch: int


class LeaseStore(abc.ABC):
    """The interface every lease backend implements (Patroni's ``AbstractDCS`` idea).

    Each method is one request to the store; none retries on its own. The caller
    records the monotonic time just *before* calling, and hands it to the role machine
    with the result (``sent_at``)."""

    @abc.abstractmethod
    async def acquire(self, node: str, expected_epoch: int) -> Grant:
        """Take the lease for ``node`` at ``expected_epoch + 1`` if it is free and the
        store's epoch is ``expected_epoch`` (compare-and-set); persist the new epoch
        before answering. ``LeaseConflict`` otherwise."""

    @abc.abstractmethod
    async def renew(self, node: str, epoch: int) -> Grant:
        """Extend ``node``'s live lease at ``epoch`` by a full ttl from now (store
        clock). ``LeaseLost`` if ``node`` does not hold a live lease at ``epoch``."""

    @abc.abstractmethod
    async def read(self) -> LeaseState:
        """The lease as it is now (linearizable)."""

    @abc.abstractmethod
    async def release(self, node: str, epoch: int) -> None:
        """Give up ``node``'s lease at ``epoch`` at once (a clean step-down); the epoch
        stays. No-op if ``node`` does not hold it."""

    @abc.abstractmethod
    async def set_sync_mark(self, node: str, epoch: int, sync_node: str | None, generation: int = 0) -> None:
        """Record which standby is synchronous (``None``: none), as the holder of the
        live lease at ``epoch``. ``LeaseLost`` if ``node`` is not that holder. The
        primary clears the mark *before* acknowledging writes without its standby.

        Writes are ordered: the store applies one only if ``(epoch, generation)`` is
        newer than the stamp of the mark it holds, else it is a successful no-op (a
        later write already won), so a write that reaches the store late never undoes
        a later one. A grant leaves the mark as it was (it names a node that held every
        acknowledged record; the new primary clears or replaces it before relying on
        it)."""

    @abc.abstractmethod
    async def report(self, node: str, position: Position, seen_epoch: int) -> None:
        """Publish ``node``'s journal position (while it is not primary) with the lease
        epoch it has seen; :meth:`read` returns every node's latest report in
        ``LeaseState.members``. Reports are advisory and need no lease."""

    async def set_pause(self, node: str, seconds: float, by: str) -> None:
        """Maintenance mode for the whole pair: no automatic promotion for ``seconds``
        (0: resume now), at most :data:`MAX_PAUSE`; ``by`` names who asked. Needs no
        lease (a pause is set from either node). Backends that cannot hold it refuse."""
        raise LeaseUnavailable(f"{type(self).__name__} cannot hold a pause")

    async def aclose(self) -> None:
        """Release connections (not the lease)."""

"""The journal's reading vocabulary: what the capabilities that fold the execution journal
(the guard's book, the breakers, the venues' order index) read of it. The journal itself is
the standby's (:class:`daemon.standby.journal.Journal` is one); the composition root
(:mod:`daemon.app`) hands them the standby service, which holds it once it is open."""

from __future__ import annotations

from typing import Protocol, Sequence


class JournalPosition(Protocol):
    """Where a journal ends (:class:`daemon.standby.Position`)."""

    @property
    def seq(self) -> int: ...

    @property
    def epoch(self) -> int: ...


class JournalEntry(Protocol):
    """One record (:class:`daemon.standby.Record`)."""

    @property
    def seq(self) -> int: ...

    @property
    def epoch(self) -> int: ...

    @property
    def timestamp_ns(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


class JournalReader(Protocol):
    """Reading the journal on the trio thread (it is not thread-safe)."""

    @property
    def last(self) -> JournalPosition: ...

    @property
    def first_seq(self) -> int: ...

    def read(self, from_seq: int, max_records: int = ..., max_bytes: int = ...) -> Sequence[JournalEntry]: ...

    def epoch_at(self, seq: int) -> int | None: ...

    async def wait_beyond(self, seq: int) -> None: ...


class JournalHolder(Protocol):
    """Holds the journal once it is open (None before): the standby service."""

    @property
    def journal(self) -> JournalReader | None: ...

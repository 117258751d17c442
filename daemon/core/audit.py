"""The audit sink's vocabulary: what a capability appends privileged acts to (a
reconciliation's actions, an operator's override). The hash-chained log itself is
recovery's (:class:`recovery.audit.AuditLog` is one); the composition root
(:mod:`daemon.app`) hands each capability a factory for it."""

from __future__ import annotations

from typing import Any, Callable, Protocol


class AuditSink(Protocol):
    def append(self, kind: str, /, **fields: Any) -> Any: ...

    def close(self) -> None: ...


#: Opens the host's audit log (each call a sink to close after use).
AuditFactory = Callable[[], AuditSink]

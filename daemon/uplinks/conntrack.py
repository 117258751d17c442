"""Selective conntrack flush: forget the flows of one uplink, and only those.

After a failover, flows NATed out of the dead uplink keep their conntrack entries: their
packets would keep being rewritten to the dead uplink's address and go nowhere until the
entries time out (up to five days for an established TCP flow). Deleting those entries
makes the next packet of each flow a new flow, NATed out of the new uplink. Flushing
the whole table instead would also cut flows that never touched the dead uplink (LAN
traffic, the other uplink's flows) — the complaint users of mwan3 and OPNsense raise —
so an entry is deleted only when it belongs to the uplink's address ``source``:

* its reply-direction destination is ``source``: the flow was masqueraded / SNATed to
  the uplink's address, or originated from it (the replies come back to ``source``);
* or its original-direction source is ``source``: the host itself sent from it.

Mechanism: pyroute2's ctnetlink support (``pyroute2.Conntrack``), which in 0.9.7 does both
the dump and the per-entry delete (checked against real flows in
tests/integration/uplinks/test_conntrack_netns.py), in a worker thread. On Linux 5.15 and later
the kernel filters the dump (two dumps: original source, reply destination), so the cost
grows with the uplink's flows, not with the table: about 0.25 ms to decode and 0.3 ms to
delete each matching entry in pyroute2, 15 ms to pass over 20 000 others. Older kernels
(and every IPv6 flush) get one unfiltered dump matched here: tuple filters arrived in
5.8, filtering on the reply tuple was broken until 5.15 (pyroute2 PR #857), pyroute2's
IPv6 filters match nothing, and a filter that silently matched too little would leave
dead flows pinned (this path decodes every entry: ~0.35 ms each).
Every entry is checked here again before it is deleted, whatever the kernel returned.
All matches are collected before the first delete, so a dump is never read while the
table changes under it. An entry gone between dump and delete (ENOENT) is not counted.

If conntrack is unavailable (nf_conntrack not loaded, no CAP_NET_ADMIN), the flush
returns 0 and says why once per reason: a host without conntrack has no NATed flows to
pin, and a daemon without the capability cannot fix that at failover time.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from typing import Any

import trio

from daemon.core.log import get_logger

log = get_logger("uplinks.conntrack")

# Errors that mean "no conntrack for us here", not "this flush went wrong".
_UNAVAILABLE = {errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT,
                errno.ENOSYS}
_reported: set[str] = set()


def belongs_to(source: ipaddress.IPv4Address | ipaddress.IPv6Address, orig_src: str | None,
               reply_dst: str | None) -> bool:
    """Does a conntrack entry with these addresses belong to the uplink owning ``source``?"""
    for address in (reply_dst, orig_src):
        if address is not None:
            try:
                if ipaddress.ip_address(address) == source:
                    return True
            except ValueError:
                continue
    return False


def kernel_filters_reliably(release: str | None = None) -> bool:
    """Does this kernel (``uname -r``) filter conntrack dumps by tuple correctly (5.15+)?"""
    match = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (5, 15)


async def flush_uplink_flows(source: str, *, kernel_filter: bool | None = None) -> int:
    """Delete the conntrack entries of flows NATed to or sent from ``source`` (an uplink's
    own address); return how many were deleted.

    ``kernel_filter``: let the kernel filter the dump (IPv4 only; default: when
    :func:`kernel_filters_reliably`). ``ValueError`` if ``source`` is not an IP address:
    an empty or unparsable source must never turn into a filter that matches everything.
    """
    address = ipaddress.ip_address(source)  # raises ValueError before anything is touched
    if kernel_filter is None:
        kernel_filter = kernel_filters_reliably()
    deleted, unavailable, failure = await trio.to_thread.run_sync(_flush_sync, address, kernel_filter)
    if unavailable is not None:
        if unavailable not in _reported:
            _reported.add(unavailable)
            log.warning("conntrack.unavailable", source=source, reason=unavailable,
                        effect="flows NATed to this uplink are not flushed")
    elif failure is not None:
        log.warning("conntrack.flush_failed", source=source, deleted=deleted, reason=failure)
    else:
        log.info("conntrack.flushed", source=source, deleted=deleted)
    return deleted


def _reason(exc: BaseException) -> tuple[int | None, str]:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return code, f"{os.strerror(code)} ({errno.errorcode[code]})"
    return None, f"{type(exc).__name__}: {exc}"


def _flush_sync(source: ipaddress.IPv4Address | ipaddress.IPv6Address,
                kernel_filter: bool) -> tuple[int, str | None, str | None]:
    """Runs in a worker thread (no trio, no logging decisions). Returns the number deleted,
    why conntrack is unavailable (or None), and why the flush stopped early (or None)."""
    try:
        from pyroute2 import Conntrack
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    except ImportError as exc:  # pragma: no cover - pyroute2 is a dependency
        return 0, f"pyroute2 missing: {exc}", None

    family = socket.AF_INET6 if source.version == 6 else socket.AF_INET
    # IPv6 always takes the full dump: pyroute2 0.9.7's IPv6 tuple filters matched
    # nothing at all on Linux 6.18, where the unfiltered dump finds the flows.
    if kernel_filter and family == socket.AF_INET:
        filters: list[dict[str, Any]] = [
            {"tuple_orig": NFCTAttrTuple(family=family, saddr=str(source))},
            {"tuple_reply": NFCTAttrTuple(family=family, daddr=str(source))},
        ]
    else:
        filters = [{}]
    deleted = 0
    try:
        with Conntrack(nfgen_family=family) as ct:
            doomed: dict[Any, Any] = {}  # by the original tuple: both dumps return local flows
            for dump_filter in filters:
                for entry in ct.dump_entries(**dump_filter):
                    if belongs_to(source, entry.tuple_orig.saddr, entry.tuple_reply.daddr):
                        doomed[(entry.zone, repr(entry.tuple_orig))] = entry
            for entry in doomed.values():
                try:
                    # Deleting by the original tuple (and zone) names exactly this entry.
                    ct.entry("del", tuple_orig=entry.tuple_orig, zone=entry.zone)
                except NetlinkError as exc:
                    if exc.code == errno.ENOENT:  # expired or deleted meanwhile
                        continue
                    raise
                deleted += 1
    except (NetlinkError, OSError) as exc:
        code, reason = _reason(exc)
        if code in _UNAVAILABLE:
            return deleted, reason, None
        return deleted, None, reason
    return deleted, None, None

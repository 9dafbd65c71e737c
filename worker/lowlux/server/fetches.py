"""Bounds on ``fetch`` replies still on their way to a peer, so a client that asks and never reads
cannot make the worker hold TIFF after TIFF in memory.

A fetch reply carries the TIFFs' bytes. ZeroMQ keeps a reply the peer has not read in the socket's
queue, so 200 unread fetches would hold 200 copies. Each fetch reply is sent with a tracker, which
ZeroMQ marks done once it has let go of the bytes (written out, or dropped with the peer); a peer
with :data:`MAX_FETCHES_PER_PEER` replies not yet done gets ``busy`` instead of another copy, and all
peers together hold at most :data:`MAX_FETCH_BYTES` (one reply is always let through).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

MAX_FETCHES_PER_PEER = 3
MAX_FETCH_BYTES = 1 << 30
SEND_HWM = 64
"""Replies queued per peer on the worker's sockets; beyond it ZeroMQ drops them (the peer is not reading)."""


@dataclass
class _InFlight:
    tracker: Any
    size: int


class FetchGate:
    """Fetch replies in flight, per peer; used by the main thread only."""

    def __init__(self, per_peer: int = MAX_FETCHES_PER_PEER, max_bytes: int = MAX_FETCH_BYTES) -> None:
        self.per_peer = per_peer
        self.max_bytes = max_bytes
        self._flying: dict[Hashable, list[_InFlight]] = {}
        self.served = 0
        self.refused = 0

    def _prune(self) -> None:
        for key in list(self._flying):
            left = [f for f in self._flying[key] if not f.tracker.done]
            if left:
                self._flying[key] = left
            else:
                del self._flying[key]

    @property
    def bytes_in_flight(self) -> int:
        self._prune()
        return sum(f.size for flying in self._flying.values() for f in flying)

    def refusal(self, peer: Hashable, size: int) -> str | None:
        """Why a fetch of ``size`` bytes for ``peer`` must wait (a ``busy`` reply), or None."""
        self._prune()
        mine = len(self._flying.get(peer, ()))
        if mine >= self.per_peer:
            self.refused += 1
            return (f"{mine} fetch replies of yours are still being sent; read the replies before asking "
                    "for more")
        total = sum(f.size for flying in self._flying.values() for f in flying)
        if total and total + size > self.max_bytes:
            self.refused += 1
            return "the worker is sending other clients' TIFFs; ask again in a moment"
        return None

    def sent(self, peer: Hashable, tracker: Any, size: int) -> None:
        """Count a fetch reply handed to ZeroMQ until ``tracker`` says it let go of the bytes."""
        self.served += 1
        self._flying.setdefault(peer, []).append(_InFlight(tracker, size))

"""What follows what: per-client request sequences as first-order transitions.

:class:`SequenceModel` remembers each client's previous request and counts a
transition ``a -> b`` when the same client asks for ``b`` after ``a`` (a
different key, within ``max_gap`` seconds).  From these counts it answers
which keys usually follow a key (:meth:`~SequenceModel.successors`), what a
client will probably ask for next (:meth:`~SequenceModel.predict_next`) and
the strongest transitions overall (:meth:`~SequenceModel.top_transitions`):
the data a predictive strategy warms from and the ``sequences`` section of
``GET /cache/warming/hot-data``.

Bounded memory: at most ``max_clients`` clients (least recently seen
forgotten), at most ``max_keys`` source keys (least recently followed
forgotten), and per source a Space-Saving summary of ``successors_per_key``
successors, so a key followed by thousands of different keys costs no more
than one followed by one.  Counts are since a source entered the model; they
are not aged (a forgotten source starts again from zero).

Sans-I/O (DESIGN rule 2): time is the ``ts`` each observation carries.
"""

from __future__ import annotations

import heapq
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from warmer.sketch import SpaceSaving

# Upper estimates of one entry's cost besides its strings (CPython 3.11,
# 64-bit; measured with tracemalloc, rounded up); see SequenceModel.memory_bound.
_CLIENT_ENTRY_BYTES: Final = 256  # OrderedDict slot and node, (key, ts) tuple, float
_SOURCE_ENTRY_BYTES: Final = 1024  # OrderedDict slot and node, SpaceSaving object, its dicts
_SUCCESSOR_BYTES: Final = 256  # one counter: two dict slots, a heap tuple, two ints
_FIXED_BYTES: Final = 16 * 1024
_STR_HEADER_BYTES: Final = 80  # sys.getsizeof of a str is at most this + 4 per character


@dataclass(frozen=True, slots=True)
class Transition:
    """One observed ``source -> target`` step, for reports."""

    source: str
    target: str
    #: Transitions counted for certain (the Space-Saving lower bound).
    count: int
    #: ``count / (outgoing + 1)``; see :meth:`SequenceModel.successors`.
    confidence: float


class SequenceModel:
    """First-order transition counts between the keys each client requests.

    ``max_gap``: a request more than this many seconds after the same
    client's previous one starts a new sequence (a new visit, not a step).
    ``max_name_bytes``: a key or client id whose string takes more
    (``sys.getsizeof``) is never remembered, which is what makes
    :meth:`memory_bound` a bound; such a request also ends the client's
    sequence.

    Transitions are counted at once, not batched: a predictive strategy
    asks for a key's successors right after observing the request for it.
    """

    __slots__ = (
        "_clients",
        "_max_clients",
        "_max_gap",
        "_max_keys",
        "_max_name",
        "_short",
        "_sources",
        "_successors",
    )

    def __init__(
        self,
        max_clients: int = 10_000,
        max_keys: int = 10_000,
        successors_per_key: int = 8,
        max_gap: float = 1800.0,
        *,
        max_name_bytes: int = 512,
    ) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        if successors_per_key < 1:
            raise ValueError(f"successors_per_key must be at least 1, got {successors_per_key}")
        if not max_gap > 0:
            raise ValueError(f"max_gap must be positive seconds, got {max_gap}")
        if max_name_bytes < 1:
            raise ValueError(f"max_name_bytes must be positive, got {max_name_bytes}")
        self._max_clients = max_clients
        self._max_keys = max_keys
        self._successors = successors_per_key
        self._max_gap = float(max_gap)
        self._max_name = max_name_bytes
        # Strings of at most this many characters fit whatever their kind
        # (4 bytes a character at most, plus the object header), so most
        # keys are checked with len() instead of sys.getsizeof().
        self._short = max(0, (max_name_bytes - _STR_HEADER_BYTES) // 4)
        # client -> (last key, its time); least recently seen first.
        self._clients: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # source key -> its successors; least recently followed first.
        self._sources: OrderedDict[str, SpaceSaving] = OrderedDict()

    @property
    def clients(self) -> int:
        """Clients whose last request is remembered."""
        return len(self._clients)

    @property
    def sources(self) -> int:
        """Keys with at least one counted successor."""
        return len(self._sources)

    def observe(self, client: str, key: str, ts: float) -> None:
        """Account for ``client`` asking for ``key`` at ``ts``: O(1), a few dict operations."""
        clients = self._clients
        prev = clients.get(client)
        if len(key) > self._short and sys.getsizeof(key) > self._max_name:
            if prev is not None:
                del clients[client]
            return
        if prev is None:
            if len(client) <= self._short or sys.getsizeof(client) <= self._max_name:
                clients[client] = (key, ts)
                if len(clients) > self._max_clients:
                    clients.popitem(last=False)
            return
        clients[client] = (key, ts)
        clients.move_to_end(client)
        prev_key, prev_ts = prev
        # abs(): concurrent requests of one client may be observed slightly
        # out of order; they are still one visit.
        if prev_key == key or not abs(ts - prev_ts) <= self._max_gap:
            return
        sources = self._sources
        successors = sources.get(prev_key)
        if successors is None:
            successors = sources[prev_key] = SpaceSaving(self._successors)
            if len(sources) > self._max_keys:
                sources.popitem(last=False)
        else:
            sources.move_to_end(prev_key)
        successors.add(key)

    def successors(self, key: str, n: int = 3) -> list[tuple[str, float, int]]:
        """The ``n`` keys most often seen right after ``key``: (next key, confidence, count).

        ``count`` is the Space-Saving lower bound of ``key -> next``
        transitions (exact while ``key`` has had at most
        ``successors_per_key`` distinct successors).  ``confidence`` is
        ``count / (outgoing + 1)``, ``outgoing`` being every transition
        counted out of ``key``: the share of ``key``'s next steps that went
        there, with one pseudo-observation of "something else" added so that
        a single sighting reads 0.5, not certainty, and the estimate tends to
        the plain ratio as evidence grows.  Confidences of one source
        therefore sum to less than 1.  Highest count first (ties by key).
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        summary = self._sources.get(key)
        if summary is None or n == 0:
            return []
        denominator = summary.total() + 1
        ranked = heapq.nsmallest(
            n,
            ((-summary.guaranteed(target), target) for target in summary),
        )
        return [(target, -neg / denominator, -neg) for neg, target in ranked if neg < 0]

    def likely_successors(
        self, key: str, n: int, *, min_count: int, min_confidence: float
    ) -> list[tuple[str, float, int]]:
        """Those of :meth:`successors` ``(key, n)`` counted at least ``min_count``
        times with a confidence of at least ``min_confidence``, in its order.

        The same answer, cheaper: both conditions grow with the count, so the
        keys meeting them are a prefix of the ranking and are ranked alone.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        summary = self._sources.get(key)
        if summary is None or n == 0:
            return []
        denominator = summary.total() + 1
        floor = max(min_count, 1)  # successors() leaves out counts of 0
        # No key is counted more than the largest counter says: usually
        # nothing qualifies, which this tells without looking at each key.
        most = summary.largest()
        if most < floor or most / denominator < min_confidence:
            return []
        ranked = sorted(
            (-count, target)
            for target, count in summary.guaranteed_items()
            if count >= floor and count / denominator >= min_confidence
        )
        return [(target, -neg / denominator, -neg) for neg, target in ranked[:n]]

    def predict_next(
        self, client: str, n: int = 3, now: float | None = None
    ) -> list[tuple[str, float]]:
        """What ``client`` will likely ask for next: (key, confidence), most likely first.

        Read from the successors of the client's last key.  With ``now``, a
        client idle for more than ``max_gap`` gets no prediction: its next
        request would start a new sequence.
        """
        last = self._clients.get(client)
        if last is None:
            return []
        if now is not None and not abs(now - last[1]) <= self._max_gap:
            return []
        return [(target, confidence) for target, confidence, _ in self.successors(last[0], n)]

    def top_transitions(self, n: int) -> list[Transition]:
        """The ``n`` transitions counted most often, over every source (ties by names)."""
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        candidates = [
            (count, source, target, summary.total() + 1)
            for source, summary in self._sources.items()
            for target in summary
            if (count := summary.guaranteed(target)) > 0
        ]
        best = heapq.nsmallest(n, candidates, key=lambda c: (-c[0], c[1], c[2]))
        return [Transition(s, t, count, count / d) for count, s, t, d in best]

    def memory_bound(self) -> int:
        """An upper estimate, in bytes, of what this model can ever hold.

        ``fixed + max_clients * (CLIENT + 2B)
        + max_keys * (SOURCE + k * SUCCESSOR + (1 + k) * B)``, where ``k`` is
        ``successors_per_key``, ``B`` = ``max_name_bytes`` (a client's id and
        last key, a source and its successors' keys, each possibly its own
        string object), ``CLIENT`` = 256, ``SOURCE`` = 1024 and ``SUCCESSOR``
        = 256: CPython 3.11 64-bit costs measured with tracemalloc, rounded up.
        Real use is usually far below: the bound assumes every name is as
        long as allowed.
        """
        name = self._max_name
        k = self._successors
        return (
            _FIXED_BYTES
            + self._max_clients * (_CLIENT_ENTRY_BYTES + 2 * name)
            + self._max_keys * (_SOURCE_ENTRY_BYTES + k * _SUCCESSOR_BYTES + (1 + k) * name)
        )

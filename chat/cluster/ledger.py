"""What this node has already applied from other nodes, so that it applies nothing twice.

Two things can bring one event twice. A room message reaches a node live, on the events
channel, and again in the replay of its room's stream that fills the gap after an outage:
every room message carries its stream id, and a node applies only ids newer than the newest
it has applied in that room (:meth:`Ledger.advance`). And a publish that redis-py retries
after a broken connection can reach Redis twice: event ids count up per process
(``<process>-<number>``), so a node applies, per scope, only numbers above the last it
applied from that process (:meth:`Ledger.fresh`).

A scope is a stretch of events that arrive in the order their node published them: one
room's streamed messages (live or replayed, always in stream order), one room's other events
(live only), and everything outside rooms (quits, renames, private messages: one
subscription carries both channels, in publication order). Streamed and other room events
are separate scopes because a replay can run ahead of live events published meanwhile.

Everything here is kept per room or per node, and goes with them: :meth:`Ledger.forget_room`
when a room is gone from this node, :meth:`Ledger.keep_rooms` to sweep rooms that went
without notice, :meth:`Ledger.forget_node` when a node is declared gone. A node keeps at
most two process ids (:data:`ORIGINS_PER_NODE`): one restarting under the same node id
replaces the oldest.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Final

from chat.cluster.messages import StreamId
from chat.protocol import Action, Event, Message, room_key

__all__ = ["ORIGINS_PER_NODE", "Ledger"]

ORIGINS_PER_NODE: Final = 2

# (room key, streamed): "" for events outside rooms.
Scope = tuple[str, bool]
_OUTSIDE_ROOMS: Final[Scope] = ("", False)


class Ledger:
    """Newest stream id per room and last event number per scope and process."""

    __slots__ = ("_counters", "_last_id")

    def __init__(self) -> None:
        self._last_id: dict[str, StreamId] = {}  # room key -> newest stream id applied
        # node -> process id prefix -> scope -> number of the last event applied from there
        self._counters: dict[str, dict[str, dict[Scope, int]]] = {}

    # --- stream ids ---------------------------------------------------------------------------

    def last_id(self, room: str) -> StreamId | None:
        """The newest stream id applied in ``room``: a replay starts after it."""
        return self._last_id.get(room_key(room))

    def advance(self, room: str, stream_id: StreamId) -> bool:
        """Record ``stream_id`` as applied in ``room``; False if it is not newer than the
        newest already applied there (the replay has delivered it)."""
        key = room_key(room)
        last = self._last_id.get(key)
        if last is not None and stream_id <= last:
            return False
        self._last_id[key] = stream_id
        return True

    # --- event numbers ------------------------------------------------------------------------

    def fresh(self, node: str, event: Event) -> bool:
        """False for an event from ``node`` already applied; records it otherwise."""
        origin, _, counter = event.id.rpartition("-")
        if not (counter.isascii() and counter.isdigit()):
            return True  # not an id this version numbers: nothing to compare it with
        number = int(counter)
        origins = self._counters.setdefault(node, {})
        scopes = origins.get(origin)
        if scopes is None:
            scopes = origins[origin] = {}
            while len(origins) > ORIGINS_PER_NODE:
                del origins[next(iter(origins))]
        if event.room is None:
            scope = _OUTSIDE_ROOMS
        else:
            scope = (room_key(event.room), isinstance(event, Message | Action))
        if number <= scopes.get(scope, 0):
            return False
        scopes[scope] = number
        return True

    # --- forgetting ---------------------------------------------------------------------------

    def forget_room(self, room: str) -> None:
        """``room`` is gone from this node: nothing of it is needed any more."""
        key = room_key(room)
        self._last_id.pop(key, None)
        for origins in self._counters.values():
            for scopes in origins.values():
                scopes.pop((key, True), None)
                scopes.pop((key, False), None)

    def keep_rooms(self, known: Container[str]) -> None:
        """Forget every room whose key is not in ``known`` (the rooms this node has)."""
        for key in [key for key in self._last_id if key not in known]:
            del self._last_id[key]
        for origins in self._counters.values():
            for scopes in origins.values():
                for scope in [s for s in scopes if s[0] and s[0] not in known]:
                    del scopes[scope]

    def forget_node(self, node: str) -> None:
        """``node`` is gone: so is what it published."""
        self._counters.pop(node, None)

    # --- measuring ----------------------------------------------------------------------------

    def footprint(self) -> dict[str, int]:
        """How many entries are kept, per kind (what a leak would make grow)."""
        scopes = [
            scope for origins in self._counters.values() for s in origins.values() for scope in s
        ]
        return {
            "stream_ids": len(self._last_id),
            "room_scopes": sum(1 for scope in scopes if scope[0]),
            "nodes": len(self._counters),
            "origins": sum(len(origins) for origins in self._counters.values()),
        }

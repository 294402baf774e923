"""This node's view of the other nodes' users: who is on which node, in which rooms.

The hub knows another node's users only as names in its rooms (``Room.remote``); which node
a user is on, and the rooms they are in, is the cluster's to know. The :class:`Directory`
keeps that, node -> nick -> rooms, and turns what happens elsewhere into
:meth:`Hub.relay <chat.hub.Hub.relay>` calls: a remote join, part, quit or rename as it
arrives (:meth:`Directory.apply`), a node's whole roster after it (re)joined
(:meth:`Directory.sync`), and the quits of a node that died (:meth:`Directory.forget`).

A nickname belongs to one user at a time, and the claims in Redis say whose. An event that
contradicts what this node knows (a join under a nickname a local user or another node's
user holds) is a stale one, from before a claim changed hands, and is ignored, as are a
part from a room the user is not in and a second join to a room they are in: so applying
one event twice, or a roster that says what the events already said, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chat.hub import Hub
from chat.protocol import (
    Action,
    Event,
    Invite,
    Join,
    Kick,
    Message,
    Mode,
    Nick,
    Part,
    Private,
    Quit,
    Topic,
    nick_key,
    room_key,
)

__all__ = ["LEFT_UNSEEN", "Directory", "RemoteUser"]

LEFT_UNSEEN = "Left while out of reach"


@dataclass(eq=False, slots=True)
class RemoteUser:
    """A user connected to another node, as this node knows them."""

    nick: str
    node: str
    rooms: dict[str, str] = field(default_factory=dict)  # room key -> name, in join order


class Directory:
    """Node -> nick -> rooms, for every node but this one; feeds the hub with the changes."""

    __slots__ = ("_by_key", "_hub", "_nodes")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._nodes: dict[str, dict[str, RemoteUser]] = {}  # node -> nick key -> user
        self._by_key: dict[str, RemoteUser] = {}  # nick key -> user, whatever their node

    # --- questions --------------------------------------------------------------------------

    def find(self, nick: str) -> RemoteUser | None:
        """The user called ``nick`` (in any case) on another node, if this node knows one."""
        return self._by_key.get(nick_key(nick))

    def nodes(self) -> set[str]:
        """The nodes with users, as far as this node knows."""
        return set(self._nodes)

    def footprint(self) -> dict[str, int]:
        """How many entries are kept, per kind (what a leak would make grow)."""
        return {
            "nodes": len(self._nodes),
            "users": len(self._by_key),
            "memberships": sum(len(user.rooms) for user in self._by_key.values()),
        }

    # --- what happened elsewhere ------------------------------------------------------------

    def apply(self, node: str, event: Event) -> None:
        """Apply one event that happened on ``node``, and relay it to the hub."""
        hub = self._hub
        match event:
            case Join(room=str(name), nick=str(nick)):
                user = self._user(node, nick, create=True)
                if user is not None and room_key(name) not in user.rooms:
                    user.rooms[room_key(name)] = name
                    hub.relay(event)
            case Part(room=str(name), nick=str(nick)):
                user = self._user(node, nick)
                if user is not None and room_key(name) in user.rooms:
                    del user.rooms[room_key(name)]
                    hub.relay(event)
            case Quit(nick=str(nick)):
                user = self._user(node, nick)
                if user is not None:
                    self._drop(user, event)
            case Nick(nick=str(old), new_nick=str(new)):
                user = self._user(node, old)
                if user is not None and self._free_for(new, user):
                    self._rename(user, new)
                    hub.relay(event, list(user.rooms.values()))
            case Kick(room=str(name), target=target):
                self.unseat(target, name)
                hub.relay(event)
            case Message() | Action() | Topic() | Private() | Mode() | Invite():
                hub.relay(event)
            case _:
                pass  # nothing else happens on one node that another should know

    def unseat(self, nick: str, room: str) -> None:
        """``nick``, if another node's user, was kicked out of ``room`` (by a user of any
        node): the room is no longer theirs, so that their next join there counts."""
        user = self._by_key.get(nick_key(nick))
        if user is not None:
            user.rooms.pop(room_key(room), None)

    def sync(self, node: str, roster: dict[str, list[str]]) -> None:
        """Make what this node knows of ``node`` equal ``roster`` (nick -> rooms), telling
        local users what changed as if they had seen it happen."""
        wanted = {nick_key(nick): nick for nick in roster}
        for key, gone in list(self._nodes.get(node, {}).items()):
            if key not in wanted:
                self._drop(gone, Quit(nick=gone.nick, text=LEFT_UNSEEN))
        for nick, rooms in roster.items():
            user = self._user(node, nick, create=True)
            if user is None:
                continue
            if user.nick != nick:  # a change of case this node missed
                self.apply(node, Nick(nick=user.nick, new_nick=nick))
            names = {room_key(name): name for name in rooms}
            for key, name in list(user.rooms.items()):
                if key not in names:
                    self.apply(node, Part(room=name, nick=user.nick))
            for name in names.values():
                self.apply(node, Join(room=name, nick=user.nick))

    def forget(self, node: str, reason: str) -> None:
        """``node`` is gone: its users quit, as far as this node's users can tell."""
        for user in list(self._nodes.get(node, {}).values()):
            self._drop(user, Quit(nick=user.nick, text=reason))
        self._nodes.pop(node, None)

    # --- bookkeeping ------------------------------------------------------------------------

    def _user(self, node: str, nick: str, *, create: bool = False) -> RemoteUser | None:
        """The user ``nick`` on ``node``; None if that nickname is someone else's here."""
        key = nick_key(nick)
        known = self._by_key.get(key)
        if known is not None:
            return known if known.node == node else None
        if not create or self._hub.find(nick) is not None:
            return None  # a local user holds it: the cluster's claim makes this a stale event
        user = self._by_key[key] = RemoteUser(nick, node)
        self._nodes.setdefault(node, {})[key] = user
        return user

    def _free_for(self, nick: str, user: RemoteUser) -> bool:
        holder = self._by_key.get(nick_key(nick))
        return (holder is None or holder is user) and self._hub.find(nick) is None

    def _rename(self, user: RemoteUser, new: str) -> None:
        roster = self._nodes[user.node]
        del self._by_key[nick_key(user.nick)]
        del roster[nick_key(user.nick)]
        user.nick = new
        self._by_key[nick_key(new)] = user
        roster[nick_key(new)] = user

    def _drop(self, user: RemoteUser, event: Quit) -> None:
        """Forget ``user`` and tell the hub, with the rooms they were in."""
        roster = self._nodes[user.node]
        del roster[nick_key(user.nick)]
        if not roster:
            del self._nodes[user.node]
        del self._by_key[nick_key(user.nick)]
        self._hub.relay(event, list(user.rooms.values()))

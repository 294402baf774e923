"""Members, rooms, and who may do what in a room: the hub's state, without its behaviour.

Standing in a room comes from four places, checked in this order:

* a server operator (``--admin``) operates every room;
* in a claimed room, the owner account and the accounts given ``o`` operate it, and the
  accounts given ``v`` speak while it is moderated (``roles``, kept by the store);
* everyone given operator status or voice while in the room (``ops``, ``voiced``: nick
  keys, so that they also cover users of other cluster nodes), which lasts while they stay;
* the creator of a room, the first to join it while empty, is in ``ops`` from the start.

Bans and mutes are masks (:func:`masks_of`): ``account:KEY``, ``nick:KEY``, ``address:IP``.
A member matching any of a room's ban masks cannot join it; any of its mute masks, speak.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chat.protocol import Action, Message, nick_key
from chat.storage import Ban, RoomState

if TYPE_CHECKING:
    from chat.hub import Peer

__all__ = [
    "MASK_KINDS",
    "Departed",
    "Member",
    "Room",
    "address_mask",
    "masks_of",
    "parse_mask",
]

MASK_KINDS = ("account", "nick", "address")


@dataclass(eq=False, slots=True)
class Member:
    """A registered user: their nickname, account, rooms in join order, active room."""

    nick: str
    peer: Peer
    rooms: dict[str, Room] = field(default_factory=dict)
    active: Room | None = None
    account: str | None = None  # the account's name, when logged in
    admin: bool = False  # a server operator (--admin)
    away: str = ""
    told_away: set[str] = field(default_factory=set)  # nick keys told of this away message
    since: float = 0.0  # when they registered (Unix time)
    last_said: float = 0.0  # when they last said something (Unix time), for /whois idle
    ignores: set[str] = field(default_factory=set)  # nick keys
    history_from: dict[str, float] = field(default_factory=dict)  # room key -> oldest ts seen
    names_rooms: bool = False  # every line names its room (IRC): no active room to announce
    user: str = ""  # what the client calls its user (IRC's USER; else the nickname)
    realname: str = ""  # IRC's real name; else the nickname
    invisible: bool = False  # IRC's +i: not listed by WHO masks to those sharing no room

    @property
    def address(self) -> str:
        return self.peer.address


@dataclass(frozen=True, slots=True)
class Departed:
    """Someone who left the chat, as IRC's WHOWAS remembers them."""

    nick: str
    user: str
    realname: str
    at: float


def address_mask(address: str) -> str:
    """The mask of an address, normalised so that one address has one spelling."""
    try:
        return f"address:{ipaddress.ip_address(address)}"
    except ValueError:
        return f"address:{address.lower()}"


def masks_of(member: Member) -> list[str]:
    """Every mask that can match ``member``."""
    masks = [f"nick:{nick_key(member.nick)}", address_mask(member.address)]
    if member.account is not None:
        masks.append(f"account:{nick_key(member.account)}")
    return masks


def parse_mask(word: str) -> str | None:
    """``kind:value`` written out, normalised; an IP address alone; else None (a name)."""
    kind, colon, value = word.partition(":")
    if colon and kind.lower() in MASK_KINDS and value:
        kind = kind.lower()
        if kind == "address":
            return address_mask(value)
        return f"{kind}:{nick_key(value)}"
    try:
        return f"address:{ipaddress.ip_address(word)}"
    except ValueError:
        return None


@dataclass(eq=False, slots=True)
class Room:
    name: str
    history: deque[Message | Action]
    topic: str = ""
    topic_by: str = ""  # who set the topic, while this process has known the room
    topic_at: float = 0.0
    created: float = field(default_factory=time.time)  # when this process first held it
    members: dict[Member, None] = field(default_factory=dict)  # local, an ordered set
    remote: dict[str, str] = field(default_factory=dict)  # on other nodes: nick key -> nick
    modes: set[str] = field(default_factory=set)  # of ROOM_MODES
    owner: str | None = None  # the account that claimed it
    roles: dict[str, str] = field(default_factory=dict)  # account key -> "o" | "v"
    ops: set[str] = field(default_factory=set)  # nick keys of its operators now
    voiced: set[str] = field(default_factory=set)  # nick keys
    bans: dict[str, Ban] = field(default_factory=dict)  # mask -> ban
    mutes: dict[str, Ban] = field(default_factory=dict)  # mask -> mute
    invites: set[str] = field(default_factory=set)  # masks invited while invite-only

    @property
    def population(self) -> int:
        return len(self.members) + len(self.remote)

    def operates(self, member: Member) -> bool:
        if member.admin or nick_key(member.nick) in self.ops:
            return True
        if self.owner is None or member.account is None:
            return False
        account = nick_key(member.account)
        return account == nick_key(self.owner) or self.roles.get(account) == "o"

    def may_speak(self, member: Member) -> bool:
        """Not muted, and voiced or an operator while the room is moderated."""
        if self.mutes and any(mask in self.mutes for mask in masks_of(member)):
            return self.operates(member)
        if "m" not in self.modes:
            return True
        if nick_key(member.nick) in self.voiced or self.operates(member):
            return True
        return member.account is not None and self.roles.get(nick_key(member.account)) == "v"

    def ban_of(self, member: Member) -> Ban | None:
        for mask in masks_of(member):
            ban = self.bans.get(mask)
            if ban is not None:
                return ban
        return None

    def invited(self, member: Member) -> bool:
        return any(mask in self.invites for mask in masks_of(member))

    def state(self) -> RoomState:
        """What the store keeps of this room while it exists (an unclaimed room that empties
        keeps only its topic: the hub saves that instead)."""
        return RoomState(
            self.name,
            topic=self.topic,
            modes="".join(sorted(self.modes)),
            owner=self.owner,
            roles=tuple(sorted(self.roles.items())),
            bans=tuple(self.bans.values()),
            mutes=tuple(self.mutes.values()),
        )

    def restore(self, state: RoomState) -> None:
        """Take back what the store kept (a room loaded on first join, or at start-up)."""
        self.topic = state.topic
        self.modes = set(state.modes)
        self.owner = state.owner
        self.roles = dict(state.roles)
        self.bans = {ban.mask: ban for ban in state.bans}
        self.mutes = {ban.mask: ban for ban in state.mutes}

"""Where the cluster's state is in Redis, and the scripts that change several keys at once.

The package docstring (``chat/cluster/__init__.py``) describes the layout; :class:`Keys`
is the one place that spells it. The scripts are Lua, run by Redis atomically: a claim
checks a nickname and its look-alike skeleton at once, a refresh or release touches only
this node's claims, and a room message is appended to its stream and published in one
step, so that publication order is stream order. What the values and messages say is
:mod:`chat.cluster.messages`'s business; the scripts only move them.
"""

from __future__ import annotations

from chat.protocol import nick_key, nick_skeleton, room_key

__all__ = ["CLAIM", "REFRESH", "RELEASE", "SAY", "Keys"]

# KEYS: nick key, skeleton key. ARGV: owner prefix ("node\n"), value, ttl ms.
# 0 = claimed (or already ours), 1 = nick taken, 2 = a look-alike is taken (returns its value).
CLAIM = """
local a = redis.call('GET', KEYS[1])
if a and string.sub(a, 1, #ARGV[1]) ~= ARGV[1] then return {1, a} end
local b = redis.call('GET', KEYS[2])
if b and string.sub(b, 1, #ARGV[1]) ~= ARGV[1] then return {2, b} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return {0, ''}
"""
# KEYS: keys to refresh. ARGV: owner prefix, ttl ms. Returns the keys no longer ours.
REFRESH = """
local lost = {}
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, key)
  end
end
return lost
"""
# KEYS: keys to release. ARGV: owner prefix. Compare-and-delete: only a claim of this node
# (one node never holds two claims on one key, and a case-only rename keeps its claim).
RELEASE = """
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""
# KEYS: room stream, events channel. ARGV: maxlen, the message before and after the id
# (messages.stream_frame), then the entry's fields and values (messages.entry_fields).
# One script, so that publication order is stream order.
SAY = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
redis.call('PUBLISH', KEYS[2], ARGV[2] .. id .. ARGV[3])
return id
"""


class Keys:
    """The Redis key layout (the package docstring lists it); ``prefix`` comes first."""

    __slots__ = ("events", "prefix", "topics")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.events = f"{prefix}events"
        self.topics = f"{prefix}topics"

    def nick(self, nick: str) -> str:
        return f"{self.prefix}nick:{nick_key(nick)}"

    def skeleton(self, nick: str) -> str:
        return f"{self.prefix}skel:{nick_skeleton(nick)}"

    def claims(self, nick: str) -> list[str]:
        return [self.nick(nick), self.skeleton(nick)]

    def presence(self, node: str) -> str:
        return f"{self.prefix}presence:{node}"

    def presence_node(self, key: str) -> str:
        return key.removeprefix(f"{self.prefix}presence:")

    def log(self, room: str) -> str:
        return f"{self.prefix}log:{room_key(room)}"

    def inbox(self, node: str) -> str:
        """The channel of private messages for ``node``'s users."""
        return f"{self.prefix}node:{node}"

    # --- what the store keeps (chat.cluster.store) ----------------------------------------

    @property
    def rooms(self) -> str:
        """A set of the room keys with kept settings (claimed or not)."""
        return f"{self.prefix}rooms"

    @property
    def claimed(self) -> str:
        """A set of the room keys with an owner."""
        return f"{self.prefix}claimed"

    @property
    def global_bans(self) -> str:
        """A hash mask -> JSON ban: the server-wide bans."""
        return f"{self.prefix}gbans"

    def account(self, name: str) -> str:
        """A registered account: a hash name, password_hash, created."""
        return f"{self.prefix}account:{nick_key(name)}"

    def ignores(self, account: str) -> str:
        """A set of the nick keys ``account`` ignores."""
        return f"{self.prefix}ignores:{nick_key(account)}"

    def room(self, room: str) -> str:
        """A kept room's settings: a hash name, topic, modes and (if claimed) owner."""
        return f"{self.prefix}room:{room_key(room)}"

    def roles(self, room: str) -> str:
        """A hash account key -> role (``o`` or ``v``) of a claimed room."""
        return f"{self.room(room)}:roles"

    def bans(self, room: str) -> str:
        """A hash mask -> JSON ban of a room."""
        return f"{self.room(room)}:bans"

    def mutes(self, room: str) -> str:
        """A hash mask -> JSON mute of a room."""
        return f"{self.room(room)}:mutes"

"""Cluster mode: several chat-server processes share one chat through Redis.

Theory of operation
-------------------
Every node keeps the whole chat in its own :class:`~chat.hub.Hub`: its local users, and in
every room the names of the other nodes' users (``Room.remote``). A local event is
delivered to local users at once and then published; other nodes apply it and deliver it
to *their* users. So local chat never waits on the network, and an outage of Redis costs
the cluster link, not the node.

The package, one concern a module:

- :mod:`~chat.cluster.messages`: what nodes say to each other and keep in Redis, as frozen
  dataclasses, each encoded and decoded in that one module.
- :mod:`~chat.cluster.directory`: this node's view of the other nodes' users (node -> nick
  -> rooms); it turns their joins, parts, quits and renames, a node's roster, a node's
  death, into :meth:`Hub.relay <chat.hub.Hub.relay>` calls, and finds a user by nickname.
- :mod:`~chat.cluster.ledger`: what was already applied (stream ids, event numbers), so
  that nothing is applied twice; kept per room and per node, and freed with them.
- :mod:`~chat.cluster.keys`: where things are in Redis, and the Lua scripts that change
  several keys at once.
- :mod:`~chat.cluster.redis`: :class:`RedisBackend`, the hub's backend: claims, presence,
  streams, heartbeats, pub/sub, reconnecting, backpressure. The only module that imports
  redis-py (the ``cluster`` extra); the server imports the package only for ``--redis``.
- :mod:`~chat.cluster.settings`: :class:`ClusterSettings`, a node's timings.

Redis holds (``P`` is the key prefix, ``chat:`` by default):

- ``P nick:<key>`` and ``P skel:<skeleton>``: nickname claims, ``"<node>\\n<nick>"``, set with
  ``NX`` semantics by a script that checks both keys at once, expiring unless the owning node
  refreshes them; released by compare-and-delete. A dead node's nicknames free themselves.
  A claim is also where a user is: a node that has not yet heard of a user another node
  has just registered finds them there (``locate``), so a private message reaches them
  as soon as their registration is acknowledged.
- ``P presence:<node>``: a hash nick -> JSON list of rooms, expiring with the node's
  heartbeat; read when a node (re)joins the cluster.
- ``P log:<room>``: one stream per room with its messages and actions: the room's history,
  trimmed to ``history_keep`` entries (at least ``GAP_WINDOW``, so that a node that was cut
  off can fill the gap). It outlives the room: an empty room's history stays, as in
  single-process mode.
- ``P topics``: a hash room key -> topic, for nodes that start later (the store keeps the
  topic too, in ``P room:<key>``).

What :class:`~chat.cluster.store.RedisStore` keeps (the cluster's
:class:`~chat.storage.Store`, every node's accounts, rooms and bans; keys are
:func:`~chat.protocol.nick_key` / :func:`~chat.protocol.room_key` of names):

- ``P account:<nick key>``: a hash ``name``, ``password_hash``, ``created``.
- ``P ignores:<nick key>``: a set of the nick keys that account ignores.
- ``P room:<room key>``: a kept room's settings, a hash ``name``, ``topic``, ``modes`` and,
  if claimed, ``owner``; beside it ``P room:<room key>:roles`` (account key -> ``o`` or
  ``v``), ``P room:<room key>:bans`` and ``P room:<room key>:mutes`` (mask -> JSON ban).
- ``P rooms``: a set of the room keys with kept settings; ``P claimed``: those with an owner.
- ``P gbans``: a hash mask -> JSON ban, the server-wide bans.

A room line is durable once the publish loop has appended it to its stream: the store's
commit waits for that (:meth:`RedisBackend.store`).

Channels: ``P events`` carries every event and heartbeat (moderation too: modes, kicks,
invites, which each node applies to its copy of the room), ``P node:<node>`` what is for that
node's users alone: private messages, server operators' kills, whois questions about them
and the answers to theirs, the away messages of those they wrote to, and a login's request
to take over a nickname one of them holds (``ghost``) with its answer (``free``), which
the login waits for before it claims the nickname.
A room message is appended to its stream and published by one script, so publication order
is stream order, and each published message carries its stream id: a node drops ids it has
already seen, which makes the replay after a gap and the live stream meet with no gap and no
duplicate.

Failure detection is end to end: every node publishes a heartbeat each ``heartbeat``
seconds and must hear its own within ``link_timeout``, or it declares the link down, tells
its users, refuses what cannot be done safely (new nicknames, private messages to other
nodes), and reconnects with exponential backoff and jitter. Back up, it re-claims its
nicknames, rewrites its presence, announces itself, reloads everyone else's presence, and
fills each room's gap from its stream. A node not heard from for ``dead_after`` seconds is
gone: its users quit, and everything kept about it is dropped.
"""

from chat.cluster.redis import RedisBackend
from chat.cluster.settings import ClusterSettings

__all__ = ["ClusterSettings", "RedisBackend"]

"""chat: a raw-socket chat server and terminal client on asyncio."""

__version__ = "0.1.0"

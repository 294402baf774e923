"""A dice bot: "!roll" or "!roll 20" in any room it is in. Usage: dicebot.py host:port [nick]"""

import asyncio
import random
import sys

from chat.client import connect
from chat.protocol import Message


async def main(address: str, nick: str) -> None:
    async for conn in connect(address, nick=nick):  # reconnects if the server restarts
        async for event in conn:
            words = event.text.split()
            if isinstance(event, Message) and not event.history and words[:1] == ["!roll"]:
                sides = max(1, int(words[1])) if words[1:2] and words[1].isdigit() else 6
                roll = random.randint(1, sides)
                await conn.say(f"{event.nick} rolls {roll} (d{sides})", room=event.room)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "dicebot"))

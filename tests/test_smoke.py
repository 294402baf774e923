"""The shortest path through the server: two people talk in the lobby."""

from __future__ import annotations

from chat.server import ChatServer
from tests.harness import JsonClient, LineClient


async def test_text_and_json_clients_talk(server: ChatServer) -> None:
    alice = await LineClient.connect(server.port, nick="alice")
    bob = await JsonClient.connect(server.port, nick="bob")
    await alice.expect(r"^\[#lobby\] \*\*\* bob joined #lobby$")
    await alice.send("hello bob")
    event = await bob.expect("message", room="#lobby", nick="alice")
    assert event.text == "hello bob"
    await bob.send({"type": "say", "room": "#lobby", "text": "hi alice"})
    await alice.expect(r"^\[#lobby\] <bob> hi alice$")
    await alice.close()
    await bob.expect("quit", nick="alice")
    await bob.close()

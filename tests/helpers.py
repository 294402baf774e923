"""Raw-socket test clients: what telnet, netcat or a bot would do, with a timeout on every wait."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chat.protocol import Event, parse_event

WAIT = 5.0  # seconds any single expectation may take before the test fails


class LineClient:
    """A text-dialect client over a real socket; every read has a timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[str] = []

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> LineClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, line: str) -> None:
        await self.send_raw(line.encode() + b"\r\n")

    async def line(self, timeout: float = WAIT) -> str:
        """The next line, without its line ending; raises EOFError at end of stream."""
        async with asyncio.timeout(timeout):
            raw = await self.reader.readline()
        if not raw:
            raise EOFError("connection closed")
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        self.seen.append(text)
        return text

    async def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (a regex searched in the line)."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                found = regex.search(await self.line(timeout))
                if found:
                    return found

    async def lines_until(self, pattern: str, timeout: float = WAIT) -> list[str]:
        """All lines up to and including the first that matches ``pattern``."""
        start = len(self.seen)
        await self.expect(pattern, timeout)
        return self.seen[start:]

    async def eof(self, timeout: float = WAIT) -> list[str]:
        """Read until the server closes the connection; return the lines read."""
        start = len(self.seen)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.line(timeout)
                except EOFError:
                    return self.seen[start:]
                except ConnectionResetError:
                    return self.seen[start:]

    async def register(self, nick: str) -> None:
        await self.expect(r"Choose a nickname")
        await self.send(nick)
        await self.expect(rf"Welcome, {re.escape(nick)}!")
        await self.expect(r"\*\*\* \d+ in #lobby:")

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(WAIT):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass


class JsonClient:
    """A JSON-Lines-dialect client over a real socket; every read has a timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.events: list[Event] = []

    @classmethod
    async def connect(cls, port: int, nick: str | None = None) -> JsonClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        await client.send({"type": "hello"})
        await client.expect("hello")
        if nick is not None:
            await client.send({"type": "nick", "nick": nick})
            await client.expect("welcome")
            await client.expect("who", room="#lobby")
        return client

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write(json.dumps(obj).encode() + b"\n")
        await self.writer.drain()

    async def event(self, timeout: float = WAIT) -> Event:
        """The next JSON event; text-dialect lines sent before the handshake are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise EOFError("connection closed")
                if raw.startswith(b"{"):
                    event = parse_event(raw)
                    self.events.append(event)
                    return event

    async def expect(self, type_: str, timeout: float = WAIT, **fields: Any) -> Event:
        """Read events until one of ``type_`` whose attributes equal ``fields``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.event(timeout)
                if event.type == type_ and all(
                    getattr(event, k, None) == v for k, v in fields.items()
                ):
                    return event

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(WAIT):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: cryptography, else openssl."""
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509  # noqa: PLC0415 - optional: openssl is the fallback
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
                *("-nodes", "-days", "1", "-subj", "/CN=chat test"),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                *("-keyout", str(key_file), "-out", str(cert_file)),
            ],
            check=True,
            capture_output=True,
        )
        return cert_file, key_file
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file

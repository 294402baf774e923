#!/usr/bin/env bash
# irctest's server tests, standard selection, serially, against one long-running chat-server
# (protocol.md, "Conformance: irctest"). Needs git, network access to GitHub and PyPI.
#   benchmarks/irctest/run.sh [WORKDIR]      results in WORKDIR/out (default /tmp/irctest)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${1:-/tmp/irctest}
PORT=${PORT:-16668}
IRCTEST_COMMIT=b00c0397
mkdir -p "$WORK"
if [ ! -d "$WORK/src" ]; then
    git clone -q https://github.com/progval/irctest "$WORK/src"
    git -C "$WORK/src" checkout -q "$IRCTEST_COMMIT"
fi
if [ ! -x "$WORK/venv/bin/python" ]; then
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q -r "$WORK/src/requirements.txt" pytest-timeout==2.4.0
fi
# irctest expects this server name, and an operator operuser/operpassword: here an --admin
# account, registered below before the run.
"$ROOT/.venv/bin/chat-server" --host 127.0.0.1 --port "$PORT" --db :memory: \
    --server-name My.Little.Server --rate 1000 --burst 1000 --max-per-ip 0 \
    --admin operuser --log-level warning &
SERVER=$!
trap 'kill $SERVER' EXIT
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
"$ROOT/.venv/bin/python" - "$PORT" <<'PY'
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
    s.sendall(b"operuser\r\n/register operpassword\r\n")
    seen = b""
    while b"now yours" not in seen:
        seen += s.recv(4096)
PY
cd "$WORK/src"
IRCTEST_SERVER_HOSTNAME=127.0.0.1 IRCTEST_SERVER_PORT="$PORT" PYTHONPATH="$HERE" \
"$WORK/venv/bin/python" -m pytest -p no:cacheprovider -p cleanup_plugin \
    --controller irctest.controllers.external_server \
    -m "not services and not implementation-specific and not deprecated and not strict" \
    --timeout=30 -q -rf irctest/server_tests/ | tee "$WORK/out.txt" | tail -60

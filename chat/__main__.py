"""``python -m chat`` runs the server."""

import sys

from chat.cli import server_main

sys.exit(server_main())

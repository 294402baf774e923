"""``python -m chat.tui`` runs ``chat-client``."""

import sys

from chat.tui.cli import main

sys.exit(main())

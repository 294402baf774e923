"""The browser client's page, script and style, served by chat.web (no build step)."""

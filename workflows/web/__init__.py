"""The token-protected approval web page."""

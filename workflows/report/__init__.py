"""Session and archive-replay reports (HTML + PNG)."""

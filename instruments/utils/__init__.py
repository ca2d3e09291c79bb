"""Small utilities shared by every layer: atomic file writes, secret redaction, library-noise
logging, 8-bit images."""

"""Microscopes and how to reach them: the Microscope protocol, frames, typed errors, clients,
bridges, the safety envelope and the wire transport."""

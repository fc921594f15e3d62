"""Dispatch's domain: distances on the sphere, drivers as the index sees them, commands."""

"""Outbound HTTP: webhook deliveries (httpx)."""

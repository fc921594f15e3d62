"""DriverRepository adapters: SQLite (embedded default)."""

from driver_service.storage.sqlite import SqliteRepository, StoreLocked

__all__ = ["SqliteRepository", "StoreLocked"]

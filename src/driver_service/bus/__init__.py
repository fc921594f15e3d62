"""LocationBus adapters: in-process (embedded default)."""

from driver_service.bus.memory import MemoryBus

__all__ = ["MemoryBus"]

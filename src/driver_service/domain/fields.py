"""Frozen slotted dataclasses built at a fraction of their constructor's cost, for the objects
made once or more per location update (fixes, driver states, tracker states, events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def fields_of(cls: type) -> Callable[[], Any]:
    """A class with the slots of the frozen dataclass `cls` and none of its guards. An
    object made as one, its fields set by plain assignment (a specialised store, ~20
    instructions: a slot's own setter, called, costs ~600, and the frozen __init__'s
    object.__setattr__ more), then given `cls` as its class, is what `cls(...)` would make,
    at under half the cost of the setters: `__class__` assignment is allowed between
    classes whose instances have the same layout (the same slots, the same base), which
    the probe below checks once at import. Every field must be set before the class is
    given: a slot left unset reads as a missing attribute."""
    fields = type(f"_{cls.__name__}Fields", (), {"__slots__": cls.__dict__["__slots__"]})
    probe = fields()
    probe.__class__ = cls  # TypeError here if the layouts ever differ
    made: Callable[[], Any] = fields
    return made

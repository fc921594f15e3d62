"""Dispatch: find nearby drivers and push commands (ride offers, navigation updates) to their
live sessions, queued while they are offline, with each command's state and outcome.

Laid out as the package's top level is, one concern a module:

- `domain/`: distances on the sphere (`geo`), drivers as the index sees them (`drivers`),
  commands and their states (`commands`); pure, no I/O;
- `ports`: what dispatch needs — `DriverIndex` (nearby search), `CommandRouter` (where
  commands go and where their state lives), `SessionHost` (this process's sessions),
  `DriverSource` (the store a rebuild reads);
- `service.Dispatch`: the application service over those ports, with `indexing` (decorators
  that keep the index in step with accepted updates) and `rebuild` (derived state rebuilt from
  the store, the source of truth, at start and whenever Redis comes back empty);
- the in-process adapters: `memory_index.MemoryDriverIndex` and `offer_book` (the
  `OfferBook` and `MemoryCommandRouter` of one replica). The Redis adapters, shared by every
  replica, live with all Redis code in `driver_service.adapters.redis` (`dispatch_index`,
  `command_router`, `index_rebuild`).
"""

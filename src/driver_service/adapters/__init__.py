"""Adapters to what runs outside the process, one package per technology: `sqlite` (the
embedded store), `postgres` (the shared store), `redis` (live state, the location bus and
dispatch's shared index and commands). No adapter imports another (import-linter keeps it)."""

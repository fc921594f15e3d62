"""The embedded store: one SQLite file in WAL mode with group commit (`repository`), and its
schema and migrations (`schema`)."""

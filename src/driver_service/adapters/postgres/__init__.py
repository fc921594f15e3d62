"""The shared store for replicas: PostgreSQL through asyncpg (`repository`), and its schema
and migrations (`schema`)."""

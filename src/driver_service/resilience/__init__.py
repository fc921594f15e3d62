"""How the service survives its dependencies and its own background work: `guard` (bounded
waits on a dependency that may hang), `supervision` (background tasks restarted or made fatal
by policy), `failure_log` (one log line per failure episode, not per call)."""

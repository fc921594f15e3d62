"""The application layer: what the service does with an update, a session or a watcher,
over the ports (`driver_service.ports`), with no gRPC, SQL or Redis of its own.

One class a module: `tracking.DriverTracking` (the use cases the servicers call), `upload.Upload`
(one client stream), `session_inbox.SessionInbox` (one driver session's outbound queue),
`writer.LocationWriter` (the group commit), `ratelimit` (per-driver token buckets) and
`fanout.MemoryBus` (this process's watcher fan-out, the embedded location bus).
"""

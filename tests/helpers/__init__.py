"""Code shared by the test tiers (and bench/): the only test code another module may import.

Test modules and conftests import from here, never from each other (tests/unit/
test_test_layout.py checks it); fixtures built on these helpers are registered by the conftest
of the tier that uses them (tests/conftest.py for PostgreSQL and Redis).

- ports: a free loopback port
- postgres, redis: private PostgreSQL and Redis servers started from the installed binaries
- sqlite_history: a SQLite store's committed history, read as another process would
- waiting: `eventually`, polling until a condition holds
- grpc_calls: DriverService messages and calls on the raw generated stub
- raw_h2: a bare HTTP/2 client (GOAWAY, pings, hand-made gRPC frames)
- server_process: `driver-service serve` as a subprocess (Launcher, ServerProcess)
- dev_server: `make run`'s development server and the environment its banner exports
- chaos_server, storm: the fault-injection tier's server with its unharmed checks, and storms
- strategies, fleets: Hypothesis strategies for inputs; random fleets and the nearby oracle
"""

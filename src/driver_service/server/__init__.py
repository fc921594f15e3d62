"""The running server in one place: `config` (every setting and flag), `startup` (start-up
checks, one line and exit 2 on a mistake), `composition` (the composition root: stores,
buses and the decorator stack around them), `running` (the gRPC server, health, shutdown),
`admin` (the admin port), `workers` (several processes on one port), `keepalive` and `heap`
(transport and garbage-collector settings)."""

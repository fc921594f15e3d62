"""The HTTP front door: a JSON API (gRPC transcoding conventions, proto3 JSON mapping),
Server-Sent Events and the live fleet map, served by uvicorn in the gRPC server's event loop
over the same servicers, rules, tokens, metrics and access log (docs/http.md)."""

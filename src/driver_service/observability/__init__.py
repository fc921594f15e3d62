"""Observability: what every log line and metric can know about the call it belongs to.
Transports set it (interceptors/), logs read it (logs.py): it lives here, below both, so
logging never imports a transport."""

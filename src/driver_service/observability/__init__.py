"""Observability in one place: the current call's context (`context`: the request id, set
by transports in interceptors/), JSON logs that read it (`logs`), and metrics (`metrics/`: the
lock-free core, the catalogue of series, the instrumented port decorators). It sits below the
transports, so logging never imports a transport."""

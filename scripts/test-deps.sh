#!/usr/bin/env bash
# `make test` needs PostgreSQL, Redis and NATS (JetStream) server binaries (the tests start
# private servers from them) and headless Chromium with its WebDriver (the fleet map's browser test). Install the missing ones when this can (root on Debian/Ubuntu: apt-get); otherwise
# stop at once with the command to run, before any test starts.
set -euo pipefail

have_postgres() {
  { command -v initdb && command -v postgres; } >/dev/null 2>&1 && return 0
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && return 0
  done
  return 1
}

missing=()
have_postgres || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null 2>&1 || missing+=(nats-server)
{ command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

command="apt-get install -y ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make test: installing ${missing[*]} (the tests start private servers from them)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $command -qq >/dev/null
  exit 0
fi
echo "make test: needs the PostgreSQL, Redis and NATS server binaries and Chromium with its driver; missing: ${missing[*]}" >&2
echo "  install them, e.g. on Debian/Ubuntu:  sudo $command" >&2
echo "  (or put initdb, postgres, redis-server, nats-server, chromium and chromedriver on PATH)" >&2
exit 1

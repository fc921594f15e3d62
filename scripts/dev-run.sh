#!/usr/bin/env bash
# `make run`: development TLS material and a token secret under $DATA (made once), then the
# server with mTLS and token auth, as in production. Prints the lines a CLI user needs.
set -euo pipefail
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data}
LISTEN=${LISTEN:-127.0.0.1:50051}
ADMIN_LISTEN=${ADMIN_LISTEN:-127.0.0.1:9090}
HTTP_LISTEN=${HTTP_LISTEN:-127.0.0.1:8443}
mkdir -p "$DATA"
# Absolute paths: the printed `export` line must work from any directory.
DATA=$(cd "$DATA" && pwd)
BIN=$(cd "$BIN" && pwd)
CERTS="$DATA/certs"
SECRET="$DATA/token.secret"
[ -f "$CERTS/ca.crt" ] || "$BIN/driver-service" certs init "$CERTS" >/dev/null
if [ ! -f "$SECRET" ]; then
  (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' > "$SECRET")
fi
# The operator at the console: every CLI command, history (`history`, `trips`) and erasure
# (`forget`, which has a scope of its own) included; scope names as in api/rules.py.
TOKEN=$("$BIN/driver-service" token issue --scope drivers:read --scope drivers:write --scope dispatch \
  --scope zones --scope events --scope webhooks --scope history:read --scope drivers:forget \
  --ttl 24h --secret-file "$SECRET")
# The fleet map reads drivers (the fleet listing and its live feed), zones, events and history.
MAP_TOKEN=$("$BIN/driver-service" token issue --scope drivers:read --scope zones \
  --scope events --scope history:read --ttl 24h --secret-file "$SECRET")

cat <<TXT
driver-service (development): mTLS and bearer tokens on $LISTEN, data in $DATA
In another terminal, to use the CLI:

  export DRIVER_SERVICE_TARGET=$LISTEN DRIVER_SERVICE_CLIENT_CA=$CERTS/ca.crt \\
         DRIVER_SERVICE_CLIENT_CERT=$CERTS/client.crt DRIVER_SERVICE_CLIENT_KEY=$CERTS/client.key \\
         DRIVER_SERVICE_TOKEN=$TOKEN
  $BIN/driver-service upload drv-1 --route --points 50 && $BIN/driver-service get drv-1
  $BIN/driver-service history drv-1 --since 1h && $BIN/driver-service trips drv-1 --since 1h

Fleet map: https://$HTTP_LISTEN/  (trust $CERTS/ca.crt in the browser, or accept the warning)
Token to paste into the map (kept for the browser tab only):

  $MAP_TOKEN

TXT
exec "$BIN/driver-service" serve --listen "$LISTEN" --admin-listen "$ADMIN_LISTEN" --data-dir "$DATA" \
  --http-listen "$HTTP_LISTEN" \
  --tls-cert "$CERTS/server.crt" --tls-key "$CERTS/server.key" --tls-client-ca "$CERTS/ca.crt" \
  --token-secret-file "$SECRET"

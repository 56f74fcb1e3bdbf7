#!/bin/bash
# Runs schemathesis (PyPI) against a live daemon over TCP with a token:
# generated requests for every operation in docs/openapi.yaml, valid and
# invalid; the run fails on any 5xx and on any response the spec does not
# describe (status, content type, headers, body schema).
set -euo pipefail
cd "$(dirname "$0")/../.."
VMEXEC=${VMEXEC:-.build/debug/vmexec}
ST=${SCHEMATHESIS:-.build/venv/bin/schemathesis}
EXAMPLES=${API_EXAMPLES:-25}
dir=$(mktemp -d /tmp/vmexec-api-XXXXXX)
token="schemathesis-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
echo "schemathesis $token" > "$dir/tokens"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$VMEXEC" serve --socket "$dir/d.sock" --state "$dir/state" --listen "127.0.0.1:$port" --tokens "$dir/tokens" \
  --max-sandboxes 3 --max-memory 1536 --log-level warning > "$dir/daemon.log" 2>&1 &
daemon=$!
finish() {
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  if [ "${1:-0}" != 0 ]; then echo "== daemon log"; tail -n 40 "$dir/daemon.log"; fi
  rm -rf "$dir"
}
trap 'finish $?' EXIT
base="http://127.0.0.1:$port"
auth="Authorization: Bearer $token"
for _ in $(seq 300); do curl -fs -H "$auth" "$base/v1/health" >/dev/null && break; sleep 0.1; done
# The sandbox the spec's examples name, so that the examples phase reaches real guests.
curl -fsS -H "$auth" -H 'Content-Type: application/json' -d '{"name": "demo", "shards": ["cpython"], "memoryMiB": 256}' \
  "$base/v1/sandboxes" >/dev/null
"$ST" run docs/openapi.yaml --url "$base" -H "$auth" --max-examples "$EXAMPLES" --request-timeout 60 \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --generation-deterministic --no-color

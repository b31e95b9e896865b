#!/usr/bin/env bash
# scripts/attack.sh: hostile clients against a real popgate, measured (issue 13).
# Not part of CI. Runs on loopback only, bounded in time.
#
#   scripts/attack.sh [N]        # N slowloris + N silent connections (default 5000)
#   SASL_BUFFERS=100000 scripts/attack.sh   # auth.max_sasl_buffers (default 256): step 4 without the cap
#
# It builds popgate and pop3attack, starts `popgate demo` only for its embedded
# IMAP store (user demo, password demo), and `popgate serve` in front of it
# with the connection limits raised (max_connections 0, per address 0) and
# login_timeout 2m, so that the held connections stay open while measured.
# Then:
#   1. quiet baseline of a normal client (login and RETR latency, 200 sessions);
#   2. N slowloris + N silent connections from 250 addresses of 127.0.0.0/8,
#      popgate's VmRSS and open files before and with them open (KB per
#      connection), and the normal client again while they are held;
#   3. garbage, TLS floods and TLS stalls at a modest size, with the normal client;
#   4. N/5 connections each holding a long SASL line open (AUTH PLAIN and 16 KiB,
#      then an octet a second): VmRSS per connection under auth.max_sasl_buffers.
# Prints pop3attack's lines and popgate's log summary (lines per message).
set -euo pipefail
N="${1:-5000}"
SB="${SASL_BUFFERS:-256}"
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * N + 500)) ]; then
	echo "attack.sh: the open-files limit $(ulimit -n) is below 2N+500 = $((2 * N + 500))" >&2
	exit 1
fi
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

go build -o "$tmp/popgate" ./cmd/popgate
go build -o "$tmp/pop3attack" ./cmd/pop3attack
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
IMAP="127.0.0.1:$(port)"; POP3="127.0.0.1:$(port)"; POP3S="127.0.0.1:$(port)"

"$tmp/popgate" demo --imap "$IMAP" --pop3 "127.0.0.1:$(port)" --pop3s "127.0.0.1:$(port)" --log-level warn >"$tmp/demo.log" 2>&1 &
pids+=($!)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
	-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
cat >"$tmp/popgate.yaml" <<YAML
listeners:
  - {address: "$POP3", tls: starttls}
  - {address: "$POP3S", tls: implicit}
tls: {cert_file: "$tmp/cert.pem", key_file: "$tmp/key.pem"}
backends:
  demo: {type: imap, address: "$IMAP", tls: none}
routes:
  - {match: "*", backend: demo}
auth: {allow_plaintext: true, failure_delay: 0s, max_sasl_buffers: $SB}
session: {login_timeout: 2m, max_connections: 0, max_connections_per_ip: 0}
log: {level: info, format: json}
YAML
for i in $(seq 100); do (exec 3<>/dev/tcp/${IMAP%:*}/${IMAP#*:}) 2>/dev/null && break; sleep 0.1; done
"$tmp/popgate" serve -c "$tmp/popgate.yaml" 2>"$tmp/popgate.log" &
PG=$!
pids+=($PG)
for i in $(seq 100); do (exec 3<>/dev/tcp/${POP3%:*}/${POP3#*:}) 2>/dev/null && break; sleep 0.1; done

echo "== $N slowloris + $N silent (held 60s), normal client before and during"
"$tmp/pop3attack" -addr "$POP3" -attacks slowloris,silent -n "$N" -sources 250 -hold 60s -interval 1s \
	-probe-user demo -probe-pass demo -probes 200 -pid "$PG" -max 5m
echo "== garbage (20 of each kind), TLS floods (500 each), 200 TLS stalls per port (held 20s)"
"$tmp/pop3attack" -addr "$POP3" -tls-addr "$POP3S" -attacks garbage,tls-flood,tls-stall -n 200 -garbage-n 20 \
	-flood-n 500 -c 16 -sources 250 -hold 20s -probe-user demo -probe-pass demo -probes 200 -pid "$PG" -max 5m
echo "== $((N / 5)) slow SASL lines (AUTH PLAIN + 16 KiB, then an octet a second; held 30s), max_sasl_buffers $SB"
"$tmp/pop3attack" -addr "$POP3" -attacks sasl-slow -n "$((N / 5))" -sources 250 -hold 30s -interval 1s \
	-probe-user demo -probe-pass demo -probes 100 -pid "$PG" -max 5m
echo "== popgate log: lines per message"
python3 - "$tmp/popgate.log" <<'PY'
import json, sys, collections
c = collections.Counter()
for l in open(sys.argv[1]):
    try: m = json.loads(l)
    except ValueError: c["(not JSON)"] += 1; continue
    c[(m.get("level"), m.get("message"))] += 1
for (k, n) in sorted(c.items(), key=lambda x: -x[1]): print(f"{n:8d}  {k}")
PY
grep -c '"session panicked"' "$tmp/popgate.log" | sed 's/^/session panicked lines: /' || true

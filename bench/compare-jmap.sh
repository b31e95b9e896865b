#!/usr/bin/env bash
# bench/compare-jmap.sh: popgate → Cyrus JMAP against Cyrus' own POP3
# (pop3d), same machine, same run, same Cyrus instance and spool.
#
# Starts, in a scratch folder, on 127.0.0.1 only:
#   C  a private Cyrus 3.6 (bench/cyrusbench: internal/testserver/cyrus)
#      with JMAP (httpd), IMAP and pop3d, users seeded over IMAP APPEND:
#      load1..load$CONC with $MSGS generated messages of
#      $MIN_SIZE..$MAX_SIZE octets, idle1..idle$IDLE with $SMALL messages,
#      big with one $BIG_MB MB message;
#   P  popgate serve with one backend `type: jmap` on C's session URL.
# Then runs pop3load (cmd/pop3load) against popgate and against Cyrus
# pop3d, alternating, and prints a table:
#   login sessions/s (connect USER PASS STAT QUIT), $CONC concurrent clients,
#   $MSGS-message maildrops, snapshot cache warm;
#   MB/s retrieving every message at $CONC concurrent clients;
#   popgate peak RSS (VmHWM) retrieving the $BIG_MB MB message (fresh process);
#   popgate RSS per idle logged-in session, $IDLE sessions of $SMALL messages.
#
# Run by hand from the repository as root (Cyrus runs as user cyrus; needs
# go, python3, cyrus-common, cyrus-caldav, sasl2-bin, and cyrus-imapd/
# cyrus-pop3d unpacked as .ci/run does); it is not part of go test:
#   bench/compare-jmap.sh
#   ROUNDS=3 CONC=8 bench/compare-jmap.sh
# Everything it starts is stopped and its folder removed at exit. The whole
# run is bounded by MAX_SECS.
set -euo pipefail

MSGS=${MSGS:-1000}
MIN_SIZE=${MIN_SIZE:-2048}
MAX_SIZE=${MAX_SIZE:-65536}
CONC=${CONC:-4}
LOGIN_SECS=${LOGIN_SECS:-10}
RETR_SECS=${RETR_SECS:-20}
ROUNDS=${ROUNDS:-3}
BIG_MB=${BIG_MB:-50}
IDLE=${IDLE:-200}
SMALL=${SMALL:-10}
MAX_SECS=${MAX_SECS:-1800}
PASS=bench-Pw-1
KEEP=${KEEP:-0}

if [ -z "${POPGATE_BENCH_TIMED:-}" ]; then
	export POPGATE_BENCH_TIMED=1
	exec timeout -s TERM "$MAX_SECS" "$0" "$@"
fi

cd "$(dirname "$0")/.."
for b in go python3; do
	command -v "$b" >/dev/null || { echo "compare-jmap.sh: $b not found" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/popgate-bench-jmap.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$p" 2>/dev/null
	done
	wait 2>/dev/null
	if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "compare-jmap.sh: interrupted (or MAX_SECS=$MAX_SECS reached)" >&2; exit 130' INT TERM

log() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ulimit -n "$(ulimit -Hn)" || true
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
	for _ in $(seq 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "compare-jmap.sh: $2 does not listen on $1" >&2
	exit 1
}

log "building popgate, pop3load, cyrusbench"
mkdir -p "$WORK/bin"
go build -o "$WORK/bin/popgate" ./cmd/popgate
go build -o "$WORK/bin/pop3load" ./cmd/pop3load
go build -o "$WORK/bin/cyrusbench" ./bench/cyrusbench
LOAD="$WORK/bin/pop3load"

log "generating $MSGS messages of $MIN_SIZE..$MAX_SIZE octets, $SMALL small ones, one of $BIG_MB MB"
python3 bench/genmaildir.py "$WORK/master" "$MSGS" "$MIN_SIZE" "$MAX_SIZE" 1 >&2
python3 bench/genmaildir.py "$WORK/small" "$SMALL" "$MIN_SIZE" "$MAX_SIZE" 2 >&2
python3 bench/genmaildir.py "$WORK/bigmaster" 1 $((BIG_MB * 1048576)) $((BIG_MB * 1048576)) 3 >&2

log "starting Cyrus and seeding $CONC x $MSGS + $IDLE x $SMALL + 1 messages over IMAP"
"$WORK/bin/cyrusbench" -pass "$PASS" -seed "load%d:$CONC:$WORK/master" -seed "idle%d:$IDLE:$WORK/small" -seed "big:1:$WORK/bigmaster" >"$WORK/cyrus.out" 2>"$WORK/cyrus.err" &
PIDS+=($!)
for _ in $(seq 6000); do grep -q '^ready' "$WORK/cyrus.out" && break; kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$WORK/cyrus.err" >&2; exit 1; }; sleep 0.1; done
grep -q '^ready' "$WORK/cyrus.out" || { echo "compare-jmap.sh: Cyrus not ready" >&2; exit 1; }
log "$(cat "$WORK/cyrus.err")"
JMAP_URL=$(awk '$1 == "jmap" {print $2}' "$WORK/cyrus.out")
CYRUS_POP3=$(awk '$1 == "pop3" {print $2}' "$WORK/cyrus.out")

popgate_conf() { # popgate_conf PORT
	cat <<EOF
listeners:
  - address: "127.0.0.1:$1"
    tls: none
backends:
  cyrus:
    type: jmap
    url: "$JMAP_URL"
routes:
  - match: "*"
    backend: cyrus
auth:
  allow_plaintext: true
session:
  max_connections: $((IDLE * 2 + 100))
log:
  level: info
  format: json
EOF
}
POPGATE_PID=
start_popgate() { # start_popgate NAME PORT
	popgate_conf "$2" >"$WORK/$1.yaml"
	"$WORK/bin/popgate" serve --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
	POPGATE_PID=$!
	PIDS+=("$POPGATE_PID")
	wait_port "$2" "popgate ($1)"
}
stop_popgate() { kill "$POPGATE_PID"; wait "$POPGATE_PID" 2>/dev/null || true; }
POP3_P=$(free_port)
start_popgate popgate "$POP3_P"
MAIN_POPGATE=$POPGATE_PID

TARGETS=(popgate cyrus-pop3)
declare -A ADDR=([popgate]=127.0.0.1:$POP3_P [cyrus-pop3]=$CYRUS_POP3)
load() { "$LOAD" -addr "${ADDR[$1]}" -pass "$PASS" -users 'load%d' -nusers "$CONC" -c "$CONC" -max 10m "${@:2}"; }
field() { sed -n "s|.* $1=\([^ ]*\).*|\1|p"; }
median() { sort -g | awk '{a[NR]=$1} END {if (!NR) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2] + a[NR/2+1]) / 2}'; }

# Warm: one retrieval of every load maildrop through each target (fills
# popgate's snapshot cache, Cyrus' caches and the page cache; -verify checks
# that LIST sizes are the octets RETR sends), then one login each, so that
# the $seen the first retrieval set is in the cached listing.
log "warming"
for t in "${TARGETS[@]}"; do
	load "$t" -mode retr -n "$CONC" -verify >"$WORK/warm-$t.txt" || { cat "$WORK/warm-$t.txt" >&2; echo "compare-jmap.sh: warm-up of $t failed" >&2; exit 1; }
	log "  $t: $(cat "$WORK/warm-$t.txt")"
	load "$t" -mode login -n "$CONC" >/dev/null
done

for r in $(seq "$ROUNDS"); do
	for t in "${TARGETS[@]}"; do
		out=$(load "$t" -mode login -d "${LOGIN_SECS}s") || true; log "round $r login $t $out"
		echo "$out" | field 'sessions/s' >>"$WORK/login-$t"
	done
	for t in "${TARGETS[@]}"; do
		out=$(load "$t" -mode retr -d "${RETR_SECS}s") || true; log "round $r retr  $t $out"
		echo "$out" | field 'MB/s' >>"$WORK/retr-$t"
	done
done
declare -A LOGIN RETR
for t in "${TARGETS[@]}"; do
	LOGIN[$t]=$(median <"$WORK/login-$t")
	RETR[$t]=$(median <"$WORK/retr-$t")
done
paste -d' ' "$WORK/login-popgate" "$WORK/login-cyrus-pop3" | awk '{printf "%.2f\n", $1/$2}' >"$WORK/login-ratio"
paste -d' ' "$WORK/retr-popgate" "$WORK/retr-cyrus-pop3" | awk '{printf "%.2f\n", $1/$2}' >"$WORK/retr-ratio"
log "per-round ratios login: $(tr '\n' ' ' <"$WORK/login-ratio") retr: $(tr '\n' ' ' <"$WORK/retr-ratio")"
POPGATE_PID=$MAIN_POPGATE stop_popgate

kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

PORT_BIG=$(free_port)
start_popgate popgate-big "$PORT_BIG"
BIG_BASE=$(kb "$POPGATE_PID" VmRSS)
out=$("$LOAD" -addr "127.0.0.1:$PORT_BIG" -pass "$PASS" -users big -mode retr -n 1 -c 1 -verify -max 5m)
log "big retr $out"
BIG_HWM=$(kb "$POPGATE_PID" VmHWM)
stop_popgate

port=$(free_port)
start_popgate popgate-idle "$port"
"$LOAD" -addr "127.0.0.1:$port" -pass "$PASS" -users idle1 -mode login -n 1 -c 1 >/dev/null
sleep 1
IB=$(kb "$POPGATE_PID" VmRSS)
"$LOAD" -addr "127.0.0.1:$port" -pass "$PASS" -users 'idle%d' -nusers "$IDLE" -mode idle -sessions "$IDLE" -c 8 -d 10m -max 10m >"$WORK/idle.out" 2>"$WORK/idle.err" &
lp=$!
PIDS+=("$lp")
for _ in $(seq 3000); do grep -q '^ready' "$WORK/idle.out" && break; kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done
sleep 2
IA=$(kb "$POPGATE_PID" VmRSS)
ready=$(grep '^ready' "$WORK/idle.out" || echo "ready sessions=0")
IN=$(echo " $ready" | field sessions)
log "idle: $ready; popgate RSS $IB kB -> $IA kB"
kill -TERM "$lp" 2>/dev/null; wait "$lp" 2>/dev/null || true
stop_popgate

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
per() { awk -v b="$1" -v a="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "n/a" }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cat <<EOF

popgate -> Cyrus JMAP vs Cyrus pop3d ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, loopback; $MSGS messages of $MIN_SIZE..$MAX_SIZE octets; $CONC concurrent clients; median of $ROUNDS round(s); per-round ratios login $(tr '\n' ' ' <"$WORK/login-ratio")/ retr $(tr '\n' ' ' <"$WORK/retr-ratio"))

| measure                    | popgate (JMAP) | Cyrus pop3d | ratio (target) |
|----------------------------|----------------|-------------|----------------|
| login sessions/s, cache warm | ${LOGIN[popgate]} | ${LOGIN[cyrus-pop3]} | $(ratio "${LOGIN[popgate]}" "${LOGIN[cyrus-pop3]}") (>= 1.0x) |
| retrieval MB/s             | ${RETR[popgate]} | ${RETR[cyrus-pop3]} | $(ratio "${RETR[popgate]}" "${RETR[cyrus-pop3]}") (>= 0.8x) |

| popgate memory                                   | measured | target |
|--------------------------------------------------|----------|--------|
| peak RSS (VmHWM) retrieving a $BIG_MB MB message | $(mb "$BIG_HWM") MB (idle RSS before: $(mb "$BIG_BASE") MB) | < 32 MB |
| RSS per idle session, $IN sessions, $SMALL msgs each | $(per "$IB" "$IA" "$IN") KB ($(mb "$IB") -> $(mb "$IA") MB) | - |
EOF

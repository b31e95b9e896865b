#!/usr/bin/env bash
# bench/compare.sh: popgate against Dovecot, same machine, same run, same store.
#
# Starts, in a scratch folder, on 127.0.0.1 only:
#   A  Dovecot (imap pop3) on a Maildir of $MSGS generated messages of
#      $MIN_SIZE..$MAX_SIZE octets: its IMAP is popgate's upstream, its POP3
#      is the "Dovecot native POP3" target;
#   B  Dovecot (pop3) with mail_location = imapc: pointed at A's IMAP, the
#      client's password passed through: "Dovecot imapc" (its index is warmed
#      once before measuring);
#   P  popgate serve in front of A's IMAP.
# Then runs pop3load (cmd/pop3load) against the three POP3 servers, one after
# the other, and prints a table:
#   login sessions/s (connect USER PASS STAT QUIT) at $CONC concurrent clients,
#   on the $MSGS-message maildrops and on $SMALL-message ones;
#   MB/s retrieving every message at $CONC concurrent clients;
#   popgate peak RSS (VmHWM) while one $BIG_MB MB message is retrieved (fresh process);
#   popgate RSS per idle logged-in session with $IDLE sessions open (fresh
#   process; maildrops of $MSGS messages, and of $SMALL messages).
#
# POP3 locks a maildrop per session, so the $CONC load users (load1..) each
# have their own Maildir, hard links of the same files; the idle users share
# one Maildir through a symlink.
#
# Run by hand from the repository (needs go, python3, dovecot-imapd,
# dovecot-pop3d); it is not part of go test:
#   bench/compare.sh
#   CONC=8 LOGIN_SECS=10 RETR_SECS=20 ROUNDS=3 bench/compare.sh
# Everything it starts is stopped and its folder removed at exit (KEEP=1
# keeps the folder). The whole run is bounded by MAX_SECS.
#
# For profiling by hand: POPGATE_BIN=FILE uses that popgate binary (e.g. one
# built with a pprof endpoint) and HOLD=1 stops after the warm-up, prints the
# three addresses and waits until interrupted (or MAX_SECS).
set -euo pipefail

MSGS=${MSGS:-1000}
MIN_SIZE=${MIN_SIZE:-2048}
MAX_SIZE=${MAX_SIZE:-204800}
CONC=${CONC:-8}
LOGIN_SECS=${LOGIN_SECS:-10}
RETR_SECS=${RETR_SECS:-20}
ROUNDS=${ROUNDS:-1}
BIG_MB=${BIG_MB:-50}
IDLE=${IDLE:-1000}
SMALL=${SMALL:-10}
MAX_SECS=${MAX_SECS:-1800}
PASS=bench-Pw-1
KEEP=${KEEP:-0}
HOLD=${HOLD:-0}
POPGATE_BIN=${POPGATE_BIN:-}

# Bound the whole run: re-run this script under timeout(1); SIGTERM at the
# limit runs the cleanup below.
if [ -z "${POPGATE_BENCH_TIMED:-}" ]; then
	export POPGATE_BENCH_TIMED=1
	exec timeout -s TERM "$MAX_SECS" "$0" "$@"
fi

cd "$(dirname "$0")/.."
for b in go python3 dovecot; do
	command -v "$b" >/dev/null || { echo "compare.sh: $b not found" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/popgate-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
		kill -9 "$p" 2>/dev/null
	done
	wait 2>/dev/null
	if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted (or MAX_SECS=$MAX_SECS reached)" >&2; exit 130' INT TERM

log() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

ulimit -n "$(ulimit -Hn)" || true
if [ "$(ulimit -n)" -lt $((IDLE * 2 + 100)) ]; then
	echo "compare.sh: ulimit -n is $(ulimit -n); $((IDLE * 2 + 100)) needed for $IDLE idle sessions" >&2
	exit 1
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # wait_port PORT NAME
	for _ in $(seq 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "compare.sh: $2 does not listen on $1" >&2
	exit 1
}

log "building popgate and pop3load"
mkdir -p "$WORK/bin"
if [ -n "$POPGATE_BIN" ]; then
	cp "$POPGATE_BIN" "$WORK/bin/popgate"
else
	go build -o "$WORK/bin/popgate" ./cmd/popgate
fi
go build -o "$WORK/bin/pop3load" ./cmd/pop3load
LOAD="$WORK/bin/pop3load"

# --- mail store -----------------------------------------------------------
log "generating $MSGS messages of $MIN_SIZE..$MAX_SIZE octets, and one of $BIG_MB MB"
python3 bench/genmaildir.py "$WORK/master" "$MSGS" "$MIN_SIZE" "$MAX_SIZE" 1 >&2
python3 bench/genmaildir.py "$WORK/small" "$SMALL" "$MIN_SIZE" "$MAX_SIZE" 2 >&2
python3 bench/genmaildir.py "$WORK/bigmaster" 1 $((BIG_MB * 1048576)) $((BIG_MB * 1048576)) 3 >&2

if [ "$(id -u)" = 0 ]; then
	MUID=65534 MGID=65534 EXTRA=""
else
	MUID=$(id -u) MGID=$(id -g)
	EXTRA="default_internal_user = $(id -un)
default_login_user = $(id -un)"
fi

: >"$WORK/users"
mkmaildir() { # mkmaildir USER SOURCE: hard links of SOURCE's files
	mkdir -p "$WORK/home/$1/Maildir"/{new,tmp}
	cp -al "$2/cur" "$WORK/home/$1/Maildir/cur"
}
adduser() { echo "$1:{PLAIN}$PASS::::::" >>"$WORK/users"; }
for i in $(seq "$CONC"); do adduser "load$i"; mkmaildir "load$i" "$WORK/master"; done
adduser big; mkmaildir big "$WORK/bigmaster"
mkdir -p "$WORK/shared" "$WORK/sharedsmall"
cp -al "$WORK/master" "$WORK/shared/Maildir"
cp -al "$WORK/small" "$WORK/sharedsmall/Maildir"
for i in $(seq "$IDLE"); do
	adduser "idle$i"; mkdir -p "$WORK/home/idle$i"; ln -s "$WORK/shared/Maildir" "$WORK/home/idle$i/Maildir"
	adduser "small$i"; mkdir -p "$WORK/home/small$i"; ln -s "$WORK/sharedsmall/Maildir" "$WORK/home/small$i/Maildir"
done
mkdir -p "$WORK/homeB"
chown -R "$MUID:$MGID" "$WORK/home" "$WORK/homeB" "$WORK/shared" "$WORK/sharedsmall" "$WORK/master" "$WORK/small" "$WORK/bigmaster" 2>/dev/null || true

# --- Dovecot A: the store (IMAP for popgate and imapc; native POP3) --------
IMAP_A=$(free_port); POP3_A=$(free_port); POP3_B=$(free_port); POP3_P=$(free_port); POP3_R=$(free_port)
common() { # common NAME
	cat <<EOF
instance_name = popgate-bench-$1-$$
base_dir = $WORK/$1/run
state_dir = $WORK/$1/state
log_path = $WORK/$1/dovecot.log
info_log_path = $WORK/$1/dovecot.log
listen = 127.0.0.1
ssl = no
ssl_client_ca_dir =
$EXTRA
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_uid = $MUID
mail_gid = $MGID
first_valid_uid = 1
first_valid_gid = 1
mail_max_userip_connections = 100000
default_process_limit = 2500
default_client_limit = 10000
default_vsz_limit = 0
pop3_uidl_format = %08Xu%08Xv
service anvil {
  client_limit = 10000
}
service auth {
  client_limit = 10000
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $2
  }
  inet_listener pop3s {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
  client_limit = 5000
}
service pop3 {
  process_limit = 2500
}
EOF
}
mkdir -p "$WORK/A" "$WORK/B"
{
	common A "$POP3_A"
	cat <<EOF
protocols = imap pop3
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $WORK/users
}
userdb {
  driver = static
  args = uid=$MUID gid=$MGID home=$WORK/home/%u
}
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_A
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
  client_limit = 5000
}
service imap {
  process_limit = 2500
}
EOF
} >"$WORK/A/dovecot.conf"
{
	common B "$POP3_B"
	cat <<EOF
protocols = pop3
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $WORK/users
  override_fields = userdb_imapc_user=%u userdb_imapc_password=%w
}
userdb {
  driver = static
  args = uid=$MUID gid=$MGID home=$WORK/homeB/%u
}
mail_location = imapc:~/imapc
imapc_host = 127.0.0.1
imapc_port = $IMAP_A
imapc_features = rfc822.size fetch-headers
EOF
} >"$WORK/B/dovecot.conf"
for x in A B; do
	doveconf -n -c "$WORK/$x/dovecot.conf" >/dev/null
	dovecot -F -c "$WORK/$x/dovecot.conf" >"$WORK/$x/stderr.log" 2>&1 &
	PIDS+=($!)
done
wait_port "$IMAP_A" "Dovecot A IMAP"; wait_port "$POP3_A" "Dovecot A POP3"; wait_port "$POP3_B" "Dovecot B POP3"

# --- popgate ----------------------------------------------------------------
popgate_conf() { # popgate_conf PORT [REUSE_MAX]
	cat <<EOF
listeners:
  - address: "127.0.0.1:$1"
    tls: none
backends:
  dovecot:
    type: imap
    address: "127.0.0.1:$IMAP_A"
    tls: none
    reuse: {max: ${2:-0}}
routes:
  - match: "*"
    backend: dovecot
auth:
  allow_plaintext: true
session:
  max_connections: $((IDLE * 2 + 100))
  max_connections_per_ip: $((IDLE * 2 + 100))
log:
  level: info
  format: json
EOF
}
POPGATE_PID=
start_popgate() { # start_popgate NAME PORT [REUSE_MAX]
	popgate_conf "$2" "${3:-0}" >"$WORK/$1.yaml"
	"$WORK/bin/popgate" serve --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
	POPGATE_PID=$!
	PIDS+=("$POPGATE_PID")
	wait_port "$2" "popgate ($1)"
}
stop_popgate() { kill "$POPGATE_PID"; wait "$POPGATE_PID" 2>/dev/null || true; }
start_popgate popgate "$POP3_P"
MAIN_POPGATE=$POPGATE_PID
# popgate-reuse: the same, with warm upstream sessions (backends.NAME.reuse)
start_popgate popgate-reuse "$POP3_R" $((CONC * 4 + 100))
REUSE_POPGATE=$POPGATE_PID

TARGETS=(popgate popgate-reuse dovecot-imapc dovecot-pop3)
declare -A ADDR=([popgate]=127.0.0.1:$POP3_P [popgate-reuse]=127.0.0.1:$POP3_R [dovecot-imapc]=127.0.0.1:$POP3_B [dovecot-pop3]=127.0.0.1:$POP3_A)

load() { # load TARGET ARGS... -> pop3load's summary line (users load1..)
	"$LOAD" -addr "${ADDR[$1]}" -pass "$PASS" -users 'load%d' -nusers "$CONC" -c "$CONC" -max 10m "${@:2}"
}
field() { sed -n "s|.* $1=\([^ ]*\).*|\1|p"; }
median() { sort -g | awk '{a[NR]=$1} END {if (!NR) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2] + a[NR/2+1]) / 2}'; }

# Warm every target once: builds Dovecot's indexes (A's per user, B's imapc
# cache) and the page cache; checks that sizes match (-verify).
log "warming: one retrieval of every maildrop through each target"
for t in "${TARGETS[@]}"; do
	load "$t" -mode retr -n "$CONC" -verify >"$WORK/warm-$t.txt" || { cat "$WORK/warm-$t.txt" >&2; echo "compare.sh: warm-up of $t failed" >&2; exit 1; }
	log "  $t: $(cat "$WORK/warm-$t.txt")"
	load "$t" -mode login -n "$CONC" -users 'small%d' >/dev/null || { echo "compare.sh: warm-up of $t (small maildrops) failed" >&2; exit 1; }
done

if [ "$HOLD" = 1 ]; then
	for t in "${TARGETS[@]}"; do echo "$t ${ADDR[$t]}"; done
	echo "popgate pid $MAIN_POPGATE; users load1..load$CONC, idle1..idle$IDLE, small1..small$IDLE, big; password $PASS; pop3load: $LOAD"
	echo "holding; interrupt to stop"
	while :; do sleep 1; done
fi

declare -A LOGIN LOGINS RETR
for r in $(seq "$ROUNDS"); do
	for t in "${TARGETS[@]}"; do
		out=$(load "$t" -mode login -d "${LOGIN_SECS}s") || true; log "round $r login $out"
		echo "$out" | field 'sessions/s' >>"$WORK/login-$t"
	done
	for t in "${TARGETS[@]}"; do
		out=$(load "$t" -mode login -d "${LOGIN_SECS}s" -users 'small%d') || true; log "round $r login-small $out"
		echo "$out" | field 'sessions/s' >>"$WORK/logins-$t"
	done
	for t in "${TARGETS[@]}"; do
		out=$(load "$t" -mode retr -d "${RETR_SECS}s") || true; log "round $r retr  $out"
		echo "$out" | field 'MB/s' >>"$WORK/retr-$t"
	done
done
for t in "${TARGETS[@]}"; do
	LOGIN[$t]=$(median <"$WORK/login-$t")
	LOGINS[$t]=$(median <"$WORK/logins-$t")
	RETR[$t]=$(median <"$WORK/retr-$t")
done
POPGATE_PID=$MAIN_POPGATE stop_popgate
POPGATE_PID=$REUSE_POPGATE stop_popgate

kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# --- peak RSS for one big message (fresh popgate) ----------------------------
PORT_BIG=$(free_port)
start_popgate popgate-big "$PORT_BIG"
BIG_BASE=$(kb "$POPGATE_PID" VmRSS)
out=$("$LOAD" -addr "127.0.0.1:$PORT_BIG" -pass "$PASS" -users big -mode retr -n 1 -c 1 -verify -max 5m)
log "big retr $out"
BIG_HWM=$(kb "$POPGATE_PID" VmHWM)
stop_popgate

# --- RSS per idle session (fresh popgate per maildrop size) -----------------
idle_run() { # idle_run USERPREFIX: sets R_BEFORE, R_AFTER (kB) and R_SESSIONS
	local port; port=$(free_port)
	start_popgate "popgate-idle-$1" "$port"
	# One session first, so that the baseline includes a used backend.
	"$LOAD" -addr "127.0.0.1:$port" -pass "$PASS" -users "${1}1" -mode login -n 1 -c 1 >/dev/null
	sleep 1
	R_BEFORE=$(kb "$POPGATE_PID" VmRSS)
	local out="$WORK/idle-$1.out"
	"$LOAD" -addr "127.0.0.1:$port" -pass "$PASS" -users "$1%d" -nusers "$IDLE" -mode idle -sessions "$IDLE" -c 16 -d 10m -max 10m >"$out" 2>"$WORK/idle-$1.err" &
	local lp=$!
	PIDS+=("$lp")
	for _ in $(seq 3000); do grep -q '^ready' "$out" && break; kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done
	sleep 2
	R_AFTER=$(kb "$POPGATE_PID" VmRSS)
	local ready; ready=$(grep '^ready' "$out" || echo "ready sessions=0")
	R_SESSIONS=$(echo " $ready" | field sessions)
	log "idle $1: $ready; popgate RSS $R_BEFORE kB -> $R_AFTER kB"
	kill -TERM "$lp" 2>/dev/null; wait "$lp" 2>/dev/null || true
	stop_popgate
}
idle_run idle; IB=$R_BEFORE IA=$R_AFTER IN=$R_SESSIONS
idle_run small; SB=$R_BEFORE SA=$R_AFTER SN=$R_SESSIONS

# --- table -------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
per() { awk -v b="$1" -v a="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "n/a" }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
IDLE_KB=$(per "$IB" "$IA" "$IN")
SMALL_KB=$(per "$SB" "$SA" "$SN")
cat <<EOF

popgate comparison ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, loopback; $MSGS messages of $MIN_SIZE..$MAX_SIZE octets; $CONC concurrent clients; median of $ROUNDS round(s))

| measure                          | popgate | Dovecot imapc | Dovecot POP3 | popgate/imapc (target) | popgate/POP3 (target) |
|----------------------------------|---------|---------------|--------------|------------------------|-----------------------|
| login sessions/s                 | ${LOGIN[popgate]} | ${LOGIN[dovecot-imapc]} | ${LOGIN[dovecot-pop3]} | $(ratio "${LOGIN[popgate]}" "${LOGIN[dovecot-imapc]}") (>= 1.5x) | $(ratio "${LOGIN[popgate]}" "${LOGIN[dovecot-pop3]}") |
| login sessions/s, $SMALL-msg maildrops | ${LOGINS[popgate]} | ${LOGINS[dovecot-imapc]} | ${LOGINS[dovecot-pop3]} | $(ratio "${LOGINS[popgate]}" "${LOGINS[dovecot-imapc]}") | $(ratio "${LOGINS[popgate]}" "${LOGINS[dovecot-pop3]}") |
| retrieval MB/s                   | ${RETR[popgate]} | ${RETR[dovecot-imapc]} | ${RETR[dovecot-pop3]} | $(ratio "${RETR[popgate]}" "${RETR[dovecot-imapc]}") (>= 1.5x) | $(ratio "${RETR[popgate]}" "${RETR[dovecot-pop3]}") (>= 0.8x) |

With warm upstream sessions (reuse: {max: $((CONC * 4 + 100))}), same run:

| measure                          | popgate-reuse | popgate-reuse/popgate | popgate-reuse/POP3 |
|----------------------------------|---------------|-----------------------|--------------------|
| login sessions/s                 | ${LOGIN[popgate-reuse]} | $(ratio "${LOGIN[popgate-reuse]}" "${LOGIN[popgate]}") | $(ratio "${LOGIN[popgate-reuse]}" "${LOGIN[dovecot-pop3]}") |
| login sessions/s, $SMALL-msg maildrops | ${LOGINS[popgate-reuse]} | $(ratio "${LOGINS[popgate-reuse]}" "${LOGINS[popgate]}") | $(ratio "${LOGINS[popgate-reuse]}" "${LOGINS[dovecot-pop3]}") |
| retrieval MB/s                   | ${RETR[popgate-reuse]} | $(ratio "${RETR[popgate-reuse]}" "${RETR[popgate]}") | $(ratio "${RETR[popgate-reuse]}" "${RETR[dovecot-pop3]}") |

| popgate memory                                   | measured | target |
|--------------------------------------------------|----------|--------|
| peak RSS (VmHWM) retrieving a $BIG_MB MB message | $(mb "$BIG_HWM") MB (idle RSS before: $(mb "$BIG_BASE") MB) | < 32 MB |
| RSS per idle session, $IN sessions, $MSGS msgs each | $IDLE_KB KB ($(mb "$IB") -> $(mb "$IA") MB) | < 100 KB |
| RSS per idle session, $SN sessions, $SMALL msgs each | $SMALL_KB KB ($(mb "$SB") -> $(mb "$SA") MB) | < 100 KB |
EOF

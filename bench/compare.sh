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
#   R  popgate serve in front of A's IMAP with warm upstream sessions
#      (reuse: {max: ...}): "popgate-reuse".
# Then runs pop3load (cmd/pop3load) against the POP3 servers, the targets one
# after the other within each round ($ROUNDS interleaved rounds, medians),
# and prints a table. The workloads ($WORKLOADS, default all):
#   login        login sessions/s (connect USER PASS STAT QUIT) at $CONC
#                concurrent clients on the $MSGS-message maildrops;
#   login-small  the same on $SMALL-message maildrops;
#   retr         MB/s retrieving every message at $CONC concurrent clients;
#   retr1        the same with one client;
#   big          MB/s retrieving the $BIG_MB MB message ($BIG_N times per round,
#                one client);
#   poll         polling sessions/s: $POLL_CONC clients poll $POLL_USERS
#                maildrops of $MSGS messages (every $POLL_INTERVAL, 0 = back to
#                back): STAT, UIDL, RETR of the UIDLs not retrieved yet, QUIT
#                (pop3load -mode poll), while bench/feedmaildir.py delivers
#                $FEED_RATE new messages a second into those maildrops' new/;
#   bigrss       popgate peak RSS (VmHWM) while one $BIG_MB MB message is
#                retrieved (fresh process);
#   idle         memory per idle logged-in session with $IDLE sessions open
#                (maildrops of $MSGS messages, and of $SMALL messages): a fresh
#                popgate's RSS, and what Dovecot A's process tree (PSS, RSS,
#                imap processes) grows by for popgate's upstream connections;
#                next to it Dovecot A's growth for $IDLE native POP3 sessions.
#
# POP3 locks a maildrop per session, so the $CONC load users (load1..) each
# have their own Maildir, hard links of the same files; the idle users share
# one Maildir through a symlink.
#
# Run by hand from the repository (needs go, python3, dovecot-imapd,
# dovecot-pop3d); it is not part of go test:
#   bench/compare.sh
#   CONC=8 LOGIN_SECS=10 RETR_SECS=20 ROUNDS=3 bench/compare.sh
#   WORKLOADS="poll" TARGETS="popgate-reuse dovecot-pop3" POLL_SECS=15 bench/compare.sh
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
BIG_N=${BIG_N:-3}
IDLE=${IDLE:-1000}
SMALL=${SMALL:-10}
POLL_SECS=${POLL_SECS:-20}
POLL_USERS=${POLL_USERS:-$((CONC * 4))}
POLL_CONC=${POLL_CONC:-$CONC}
POLL_INTERVAL=${POLL_INTERVAL:-0s}
FEED_RATE=${FEED_RATE:-16}
WORKLOADS=${WORKLOADS:-login login-small retr retr1 big poll bigrss idle}
TARGETS=${TARGETS:-popgate popgate-reuse dovecot-imapc dovecot-pop3}
MAX_SECS=${MAX_SECS:-3600}
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
has() { case " $WORKLOADS " in *" $1 "*) return 0 ;; esac; return 1; }
for w in $WORKLOADS; do
	case $w in
	login | login-small | retr | retr1 | big | poll | bigrss | idle) ;;
	*) echo "compare.sh: unknown workload $w in WORKLOADS" >&2; exit 2 ;;
	esac
done
for t in $TARGETS; do
	case $t in
	popgate | popgate-reuse | dovecot-imapc | dovecot-pop3) ;;
	*) echo "compare.sh: unknown target $t in TARGETS" >&2; exit 2 ;;
	esac
done
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
# poll1..: the polling workload's maildrops (new mail is delivered into them)
POLL_DIRS=()
if has poll; then
	for i in $(seq "$POLL_USERS"); do
		adduser "poll$i"; mkmaildir "poll$i" "$WORK/master"; POLL_DIRS+=("$WORK/home/poll$i/Maildir")
	done
fi
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
	[ "$x" = A ] && DOVECOT_A=$!
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
REUSE_MAX=$((CONC * 4 + POLL_USERS + 100))
start_popgate popgate-reuse "$POP3_R" "$REUSE_MAX"
REUSE_POPGATE=$POPGATE_PID

read -r -a TARGETS <<<"$TARGETS"
declare -A ADDR=([popgate]=127.0.0.1:$POP3_P [popgate-reuse]=127.0.0.1:$POP3_R [dovecot-imapc]=127.0.0.1:$POP3_B [dovecot-pop3]=127.0.0.1:$POP3_A)

load() { # load TARGET ARGS... -> pop3load's summary line (users load1..)
	"$LOAD" -addr "${ADDR[$1]}" -pass "$PASS" -users 'load%d' -nusers "$CONC" -c "$CONC" -max 10m "${@:2}"
}
field() { sed -n "s|.* $1=\([^ ]*\).*|\1|p"; }
# ms: pop3load durations (1.2s, 3.45ms, 870us) in milliseconds
ms() { awk '/s$/ { v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else { sub(/s$/, "", v); v *= 1000 }; printf "%.2f\n", v }'; }
median() { sort -g | awk '{a[NR]=$1} END {if (!NR) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2] + a[NR/2+1]) / 2}'; }

# Warm every target once: builds Dovecot's indexes (A's per user, B's imapc
# cache) and the page cache; checks that sizes match (-verify).
log "warming: one retrieval of every maildrop through each target"
for t in "${TARGETS[@]}"; do
	load "$t" -mode retr -n "$CONC" -verify >"$WORK/warm-$t.txt" || { cat "$WORK/warm-$t.txt" >&2; echo "compare.sh: warm-up of $t failed" >&2; exit 1; }
	log "  $t: $(cat "$WORK/warm-$t.txt")"
	load "$t" -mode login -n "$CONC" -users 'small%d' >/dev/null || { echo "compare.sh: warm-up of $t (small maildrops) failed" >&2; exit 1; }
	if has big; then
		"$LOAD" -addr "${ADDR[$t]}" -pass "$PASS" -users big -mode retr -n 1 -c 1 -verify -max 5m >/dev/null || { echo "compare.sh: warm-up of $t (big message) failed" >&2; exit 1; }
	fi
done

if [ "$HOLD" = 1 ]; then
	for t in "${TARGETS[@]}"; do echo "$t ${ADDR[$t]}"; done
	echo "popgate pid $MAIN_POPGATE; users load1..load$CONC, idle1..idle$IDLE, small1..small$IDLE, big; password $PASS; pop3load: $LOAD"
	echo "holding; interrupt to stop"
	while :; do sleep 1; done
fi

# poll_run TARGET: one polling measurement. The client state is primed
# first (untimed: the UIDLs present now count as retrieved), then the run
# retrieves only what the feeder delivers while it polls.
poll_run() {
	local state="$WORK/poll-state-$1.json"
	rm -f "$state"
	"$LOAD" -addr "${ADDR[$1]}" -pass "$PASS" -users 'poll%d' -nusers "$POLL_USERS" -c "$POLL_CONC" \
		-mode poll -state "$state" -d 1ms -max 5m >/dev/null || { echo "compare.sh: priming the poll state on $1 failed" >&2; return 1; }
	"$LOAD" -addr "${ADDR[$1]}" -pass "$PASS" -users 'poll%d' -nusers "$POLL_USERS" -c "$POLL_CONC" \
		-mode poll -state "$state" -interval "$POLL_INTERVAL" -d "${POLL_SECS}s" -max 10m
}
FEED_PID=
start_feeder() {
	python3 bench/feedmaildir.py --rate "$FEED_RATE" --min "$MIN_SIZE" --max "$MAX_SIZE" --seed "$1" "${POLL_DIRS[@]}" >"$WORK/feed-$1.out" 2>&1 &
	FEED_PID=$!
	PIDS+=("$FEED_PID")
	# python starts slowly on a loaded machine: wait until it feeds
	for _ in $(seq 300); do
		grep -q '^feeding' "$WORK/feed-$1.out" && return 0
		sleep 0.1
	done
	echo "compare.sh: the feeder did not start" >&2
	exit 1
}
stop_feeder() { kill "$FEED_PID" 2>/dev/null; wait "$FEED_PID" 2>/dev/null || true; log "  feeder: $(cat "$WORK/feed-$1.out")"; }

for r in $(seq "$ROUNDS"); do
	if has login; then
		for t in "${TARGETS[@]}"; do
			out=$(load "$t" -mode login -d "${LOGIN_SECS}s") || true; log "round $r login $out"
			echo "$out" | field 'sessions/s' >>"$WORK/login-$t"
		done
	fi
	if has login-small; then
		for t in "${TARGETS[@]}"; do
			out=$(load "$t" -mode login -d "${LOGIN_SECS}s" -users 'small%d') || true; log "round $r login-small $out"
			echo "$out" | field 'sessions/s' >>"$WORK/logins-$t"
		done
	fi
	if has retr; then
		for t in "${TARGETS[@]}"; do
			out=$(load "$t" -mode retr -d "${RETR_SECS}s") || true; log "round $r retr  $out"
			echo "$out" | field 'MB/s' >>"$WORK/retr-$t"
		done
	fi
	if has retr1; then
		for t in "${TARGETS[@]}"; do
			out=$(load "$t" -mode retr -c 1 -d "${RETR_SECS}s") || true; log "round $r retr1 $out"
			echo "$out" | field 'MB/s' >>"$WORK/retr1-$t"
		done
	fi
	if has big; then
		for t in "${TARGETS[@]}"; do
			out=$("$LOAD" -addr "${ADDR[$t]}" -pass "$PASS" -users big -mode retr -n "$BIG_N" -c 1 -max 5m) || true; log "round $r big   $out"
			echo "$out" | field 'MB/s' >>"$WORK/big-$t"
		done
	fi
	if has poll; then
		start_feeder "$r"
		for t in "${TARGETS[@]}"; do
			out=$(poll_run "$t") || true; log "round $r poll  $out"
			echo "$out" | field 'sessions/s' >>"$WORK/poll-$t"
			echo "$out" | field p50 | ms >>"$WORK/pollp50-$t"
			echo "$out" | field p99 | ms >>"$WORK/pollp99-$t"
			echo "$out" | field messages >>"$WORK/pollmsgs-$t"
		done
		stop_feeder "$r"
	fi
done
declare -A LOGIN LOGINS RETR RETR1 BIG POLL POLLP50 POLLP99 POLLMSGS
for t in "${TARGETS[@]}"; do
	for f in login logins retr retr1 big poll pollp50 pollp99 pollmsgs; do touch "$WORK/$f-$t"; done
	LOGIN[$t]=$(median <"$WORK/login-$t")
	LOGINS[$t]=$(median <"$WORK/logins-$t")
	RETR[$t]=$(median <"$WORK/retr-$t")
	RETR1[$t]=$(median <"$WORK/retr1-$t")
	BIG[$t]=$(median <"$WORK/big-$t")
	POLL[$t]=$(median <"$WORK/poll-$t")
	POLLP50[$t]=$(median <"$WORK/pollp50-$t")
	POLLP99[$t]=$(median <"$WORK/pollp99-$t")
	POLLMSGS[$t]=$(median <"$WORK/pollmsgs-$t")
done
POPGATE_PID=$MAIN_POPGATE stop_popgate
POPGATE_PID=$REUSE_POPGATE stop_popgate

kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

# --- peak RSS for one big message (fresh popgate) ----------------------------
BIG_BASE=0 BIG_HWM=0
if has bigrss; then
	PORT_BIG=$(free_port)
	start_popgate popgate-big "$PORT_BIG"
	BIG_BASE=$(kb "$POPGATE_PID" VmRSS)
	out=$("$LOAD" -addr "127.0.0.1:$PORT_BIG" -pass "$PASS" -users big -mode retr -n 1 -c 1 -verify -max 5m)
	log "bigrss retr $out"
	BIG_HWM=$(kb "$POPGATE_PID" VmHWM)
	stop_popgate
fi

# --- memory per idle session --------------------------------------------------
# upstream: Dovecot A's whole process tree (master, auth, login and mail
# processes): "procs=N rss_kb=R pss_kb=P", and its imap and pop3 processes
upstream() { python3 bench/procmem.py "$DOVECOT_A" imap pop3; }
# idle_run NAME ADDR USERPREFIX [POPGATE_PID]: opens $IDLE sessions to ADDR and
# holds them; sets I_SESSIONS, I_RB/I_RA (popgate VmRSS before/after, kB), and
# I_UB/I_UA (upstream before/after)
idle_run() {
	local pid=${4:-}
	# One session first, so that the baseline includes a used backend.
	"$LOAD" -addr "$2" -pass "$PASS" -users "${3}1" -mode login -n 1 -c 1 >/dev/null
	sleep 2
	I_RB=0 I_RA=0
	[ -n "$pid" ] && I_RB=$(kb "$pid" VmRSS)
	I_UB=$(upstream)
	local out="$WORK/idle-$1.out"
	"$LOAD" -addr "$2" -pass "$PASS" -users "$3%d" -nusers "$IDLE" -mode idle -sessions "$IDLE" -c 16 -d 10m -max 10m >"$out" 2>"$WORK/idle-$1.err" &
	local lp=$!
	PIDS+=("$lp")
	for _ in $(seq 3000); do grep -q '^ready' "$out" && break; kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done
	sleep 2
	[ -n "$pid" ] && I_RA=$(kb "$pid" VmRSS)
	I_UA=$(upstream)
	local ready; ready=$(grep '^ready' "$out" || echo "ready sessions=0")
	I_SESSIONS=$(echo " $ready" | field sessions)
	log "idle $1: $ready; popgate RSS $I_RB kB -> $I_RA kB; Dovecot A: $I_UB -> $I_UA"
	kill -TERM "$lp" 2>/dev/null; wait "$lp" 2>/dev/null || true
	sleep 2 # let Dovecot's processes of the held sessions exit
}
per() { awk -v b="$1" -v a="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "n/a" }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
IDLE_ROWS=
idle_rows() { # idle_rows USERPREFIX MSGS: popgate (fresh process), then Dovecot POP3, on the same maildrops
	local port; port=$(free_port)
	start_popgate "popgate-idle-$1" "$port"
	idle_run "popgate-$1" "127.0.0.1:$port" "$1" "$POPGATE_PID"
	stop_popgate
	local n=$I_SESSIONS
	IDLE_ROWS+="| popgate, $n idle sessions, $2 msgs each | $(per "$I_RB" "$I_RA" "$n") KB ($(mb "$I_RB") -> $(mb "$I_RA") MB) | $(per "$(echo " $I_UB" | field pss_kb)" "$(echo " $I_UA" | field pss_kb)" "$n") KB | $(per "$(echo " $I_UB" | field rss_kb)" "$(echo " $I_UA" | field rss_kb)" "$n") KB | imap $(echo " $I_UB" | field imap) -> $(echo " $I_UA" | field imap) |
"
	idle_run "dovecot-$1" "127.0.0.1:$POP3_A" "$1"
	n=$I_SESSIONS
	IDLE_ROWS+="| Dovecot POP3, $n idle sessions, $2 msgs each | - | $(per "$(echo " $I_UB" | field pss_kb)" "$(echo " $I_UA" | field pss_kb)" "$n") KB | $(per "$(echo " $I_UB" | field rss_kb)" "$(echo " $I_UA" | field rss_kb)" "$n") KB | pop3 $(echo " $I_UB" | field pop3) -> $(echo " $I_UA" | field pop3) |
"
}
if has idle; then
	idle_rows idle "$MSGS"
	idle_rows small "$SMALL"
fi

# --- table -------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
# rounds FILE-PREFIX A B: the ratio A/B in each round
rounds() {
	[ -s "$WORK/$1-$2" ] && [ -s "$WORK/$1-$3" ] || { echo "-"; return; }
	paste -d ' ' "$WORK/$1-$2" "$WORK/$1-$3" | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), ($2 > 0 ? sprintf("%.2f", $1 / $2) : "n/a") } END { print "" }'
}
declare -A NAME=([popgate]=popgate [popgate-reuse]=popgate-reuse [dovecot-imapc]="Dovecot imapc" [dovecot-pop3]="Dovecot POP3")
has_t() { case " ${TARGETS[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
row() { # row LABEL FILE-PREFIX ARRAY TARGET-TEXT
	local -n vals=$3
	local line="| $1 |" t
	for t in "${TARGETS[@]}"; do line+=" ${vals[$t]} |"; done
	if has_t dovecot-pop3; then
		has_t popgate && line+=" $(ratio "${vals[popgate]}" "${vals[dovecot-pop3]}") ($(rounds "$2" popgate dovecot-pop3)) |"
		has_t popgate-reuse && line+=" $(ratio "${vals[popgate-reuse]}" "${vals[dovecot-pop3]}") ($(rounds "$2" popgate-reuse dovecot-pop3)) |"
	fi
	has_t dovecot-imapc && has_t popgate && line+=" $(ratio "${vals[popgate]}" "${vals[dovecot-imapc]}") |"
	echo "$line $4 |"
}
{
	echo
	echo "popgate comparison ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, loopback, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; $MSGS messages of $MIN_SIZE..$MAX_SIZE octets; $CONC concurrent clients; median of $ROUNDS interleaved round(s), per-round ratios in brackets; popgate-reuse: reuse: {max: $REUSE_MAX})"
	if has login || has login-small || has retr || has retr1 || has big || has poll; then
		echo
		head="| measure |" sep="|---|"
		for t in "${TARGETS[@]}"; do head+=" ${NAME[$t]} |"; sep+="---|"; done
		if has_t dovecot-pop3; then
			has_t popgate && { head+=" popgate/POP3 |"; sep+="---|"; }
			has_t popgate-reuse && { head+=" popgate-reuse/POP3 |"; sep+="---|"; }
		fi
		has_t dovecot-imapc && has_t popgate && { head+=" popgate/imapc |"; sep+="---|"; }
		echo "$head target (issues 3, 15) |"
		echo "$sep---|"
		has login && row "login sessions/s, $MSGS-msg maildrops, $CONC clients" login LOGIN "popgate/POP3 >= 1.0x; popgate/imapc >= 1.5x"
		has login-small && row "login sessions/s, $SMALL-msg maildrops" logins LOGINS "-"
		has retr && row "retrieval MB/s, $CONC clients" retr RETR "popgate/POP3 >= 0.8x every round (aim 1.0x); popgate/imapc >= 1.5x"
		has retr1 && row "retrieval MB/s, 1 client" retr1 RETR1 "popgate/POP3 >= 0.8x every round (aim 1.0x)"
		has big && row "$BIG_MB MB message MB/s, 1 client" big BIG "popgate/POP3 >= 1.0x"
		if has poll; then
			row "polling sessions/s ($POLL_USERS maildrops, $POLL_CONC clients, interval $POLL_INTERVAL, $FEED_RATE new msgs/s)" poll POLL "popgate-reuse/POP3 >= 1.5x"
			row "polling session p50 ms (lower is better)" pollp50 POLLP50 "-"
			row "polling session p99 ms (lower is better)" pollp99 POLLP99 "-"
			row "new messages retrieved per polling run" pollmsgs POLLMSGS "-"
		fi
	fi
	if has bigrss; then
		echo
		echo "| popgate memory | measured | target |"
		echo "|---|---|---|"
		echo "| peak RSS (VmHWM) retrieving a $BIG_MB MB message, fresh process | $(mb "$BIG_HWM") MB (RSS before: $(mb "$BIG_BASE") MB) | < 32 MB |"
	fi
	if has idle; then
		echo
		echo "Idle sessions: popgate's RSS growth per session (fresh process), and Dovecot A's (the upstream's) growth per session, PSS (shared pages divided among processes) and RSS summed over its process tree; popgate's target < 100 KB."
		echo
		echo "| sessions | popgate RSS / session | Dovecot A PSS / session | Dovecot A RSS / session | Dovecot A processes |"
		echo "|---|---|---|---|---|"
		printf '%s' "$IDLE_ROWS"
	fi
}

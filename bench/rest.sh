#!/usr/bin/env bash
# bench/rest.sh: popgate in front of the reference REST store
# (examples/maildir-store) next to popgate in front of Dovecot IMAP, on the
# same Maildirs, with the same bcrypt password hash on both sides (Dovecot
# BLF-CRYPT, the store's users file), in one run on one machine over
# loopback. Run by hand, never by go test:
#
#   bench/rest.sh                               # defaults below, about 4 minutes
#   ROUNDS=3 COST=5 MSGS=1000 IDLE=500 bench/rest.sh
#
# Figures (cmd/pop3load, as bench/compare.sh takes them):
#   login sessions/s on 1000-message maildrops (connect, USER, PASS, STAT, QUIT)
#   retrieval MB/s (login, RETR every message, QUIT)
#   peak RSS (VmHWM) of a fresh popgate retrieving one BIG_MB MB message
#   RSS per idle session (IDLE sessions on 1000-message maildrops)
# for each path; the ratios rest/imap are of the same run.
set -euo pipefail
exec </dev/null

CONC=${CONC:-8}
LOGIN_SECS=${LOGIN_SECS:-10}
RETR_SECS=${RETR_SECS:-15}
ROUNDS=${ROUNDS:-1}
MSGS=${MSGS:-1000}
MIN_SIZE=${MIN_SIZE:-2000}
MAX_SIZE=${MAX_SIZE:-60000}
BIG_MB=${BIG_MB:-50}
IDLE=${IDLE:-500}
COST=${COST:-5}          # bcrypt cost of the one hash both sides verify
MAX_SECS=${MAX_SECS:-1800}
PASS=bench-Pw-1
KEEP=${KEEP:-0}

if [ -z "${POPGATE_BENCH_TIMED:-}" ]; then
	export POPGATE_BENCH_TIMED=1
	exec timeout -s TERM "$MAX_SECS" "$0" "$@"
fi

cd "$(dirname "$0")/.."
for b in go python3 dovecot; do
	command -v "$b" >/dev/null || { echo "rest.sh: $b not found" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/popgate-rest-bench.XXXXXX)
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
trap 'echo "rest.sh: interrupted (or MAX_SECS=$MAX_SECS reached)" >&2; exit 130' INT TERM
log() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ulimit -n "$(ulimit -Hn)" || true
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT NAME
	for _ in $(seq 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "rest.sh: $2 does not listen on $1" >&2
	exit 1
}

log "building popgate, pop3load, maildir-store"
mkdir -p "$WORK/bin"
go build -o "$WORK/bin/popgate" ./cmd/popgate
go build -o "$WORK/bin/pop3load" ./cmd/pop3load
go build -o "$WORK/bin/maildir-store" ./examples/maildir-store
LOAD="$WORK/bin/pop3load"

log "generating $MSGS messages of $MIN_SIZE..$MAX_SIZE octets, and one of $BIG_MB MB"
python3 bench/genmaildir.py "$WORK/master" "$MSGS" "$MIN_SIZE" "$MAX_SIZE" 1 >&2
python3 bench/genmaildir.py "$WORK/bigmaster" 1 $((BIG_MB * 1048576)) $((BIG_MB * 1048576)) 3 >&2

if [ "$(id -u)" = 0 ]; then
	MUID=65534 MGID=65534 EXTRA=""
else
	MUID=$(id -u) MGID=$(id -g)
	EXTRA="default_internal_user = $(id -un)
default_login_user = $(id -un)"
fi

# One bcrypt hash, verified by both: Dovecot's passwd-file ({BLF-CRYPT},
# crypt(3)) and the store's users file (golang.org/x/crypto/bcrypt).
HASH=$(printf '%s\n' "$PASS" | "$WORK/bin/maildir-store" hash --cost "$COST")
: >"$WORK/dovecot-users"; : >"$WORK/store-users"
mkdir -p "$WORK/storeroot"
adduser() { # adduser USER MAILDIR-SOURCE|link:TARGET
	echo "$1:{BLF-CRYPT}$HASH::::::" >>"$WORK/dovecot-users"
	echo "$1:$HASH" >>"$WORK/store-users"
	case "$2" in
	link:*) mkdir -p "$WORK/home/$1"; ln -s "${2#link:}" "$WORK/home/$1/Maildir" ;;
	*) mkdir -p "$WORK/home/$1/Maildir"/{new,tmp}; cp -al "$2/cur" "$WORK/home/$1/Maildir/cur" ;;
	esac
	ln -s "$WORK/home/$1/Maildir" "$WORK/storeroot/$1"
}
for i in $(seq "$CONC"); do adduser "load$i" "$WORK/master"; done
adduser big "$WORK/bigmaster"
mkdir -p "$WORK/shared"
cp -al "$WORK/master" "$WORK/shared/Maildir"
for i in $(seq "$IDLE"); do adduser "idle$i" "link:$WORK/shared/Maildir"; done
chown -R "$MUID:$MGID" "$WORK/home" "$WORK/shared" "$WORK/master" "$WORK/bigmaster" 2>/dev/null || true

# --- Dovecot IMAP -----------------------------------------------------------
IMAP=$(free_port)
mkdir -p "$WORK/dovecot"
cat >"$WORK/dovecot/dovecot.conf" <<EOF
instance_name = popgate-rest-bench-$$
base_dir = $WORK/dovecot/run
state_dir = $WORK/dovecot/state
log_path = $WORK/dovecot/dovecot.log
info_log_path = $WORK/dovecot/dovecot.log
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
protocols = imap
passdb {
  driver = passwd-file
  args = username_format=%u $WORK/dovecot-users
}
userdb {
  driver = static
  args = uid=$MUID gid=$MGID home=$WORK/home/%u
}
mail_location = maildir:~/Maildir
service anvil {
  client_limit = 10000
}
service auth {
  client_limit = 10000
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP
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
doveconf -n -c "$WORK/dovecot/dovecot.conf" >/dev/null
dovecot -F -c "$WORK/dovecot/dovecot.conf" >"$WORK/dovecot/stderr.log" 2>&1 &
PIDS+=($!)
wait_port "$IMAP" "Dovecot IMAP"

# --- the reference store ----------------------------------------------------
STORE=$(free_port)
"$WORK/bin/maildir-store" --listen "127.0.0.1:$STORE" --maildirs "$WORK/storeroot" --users "$WORK/store-users" >"$WORK/store.log" 2>&1 &
PIDS+=($!)
wait_port "$STORE" "maildir-store"

# --- popgate, one per path --------------------------------------------------
popgate_conf() { # popgate_conf PORT imap|rest
	printf 'listeners:\n  - address: "127.0.0.1:%s"\n    tls: none\nbackends:\n  upstream:\n' "$1"
	if [ "$2" = imap ]; then
		printf '    type: imap\n    address: "127.0.0.1:%s"\n    tls: none\n' "$IMAP"
	else
		printf '    type: rest\n    url: "http://127.0.0.1:%s/pop/v1"\n' "$STORE"
	fi
	printf 'routes:\n  - match: "*"\n    backend: upstream\nauth:\n  allow_plaintext: true\n'
	printf 'session:\n  max_connections: %s\n  max_connections_per_ip: %s\nlog:\n  level: warn\n  format: json\n' $((IDLE * 2 + 100)) $((IDLE * 2 + 100))
}
declare -A PID PORT
start_popgate() { # start_popgate NAME imap|rest
	local port; port=$(free_port)
	popgate_conf "$port" "$2" >"$WORK/$1.yaml"
	"$WORK/bin/popgate" serve --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
	PID[$1]=$!; PORT[$1]=$port
	PIDS+=("${PID[$1]}")
	wait_port "$port" "popgate ($1)"
}
stop_popgate() { kill "${PID[$1]}"; wait "${PID[$1]}" 2>/dev/null || true; }
kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
load() { # load NAME ARGS...
	"$LOAD" -addr "127.0.0.1:${PORT[$1]}" -pass "$PASS" -users 'load%d' -nusers "$CONC" -c "$CONC" -max 10m "${@:2}"
}
field() { sed -n "s|.* $1=\([^ ]*\).*|\1|p"; }
median() { sort -g | awk '{a[NR]=$1} END {if (!NR) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2] + a[NR/2+1]) / 2}'; }

TARGETS=(imap rest)
for t in "${TARGETS[@]}"; do start_popgate "$t" "$t"; done
log "warming: one retrieval of every load maildrop through each path (-verify: RETR octets = LIST)"
for t in "${TARGETS[@]}"; do
	load "$t" -mode retr -n "$CONC" -verify >"$WORK/warm-$t.txt" || { cat "$WORK/warm-$t.txt" "$WORK/$t.log" >&2; echo "rest.sh: warm-up of $t failed" >&2; exit 1; }
	log "  $t: $(cat "$WORK/warm-$t.txt")"
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
declare -A LOGIN RETR BIG BIGBASE IDLEKB IDLEB IDLEA IDLEN
for t in "${TARGETS[@]}"; do
	LOGIN[$t]=$(median <"$WORK/login-$t"); RETR[$t]=$(median <"$WORK/retr-$t")
	stop_popgate "$t"
done

for t in "${TARGETS[@]}"; do
	start_popgate "big-$t" "$t"
	BIGBASE[$t]=$(kb "${PID[big-$t]}" VmRSS)
	out=$("$LOAD" -addr "127.0.0.1:${PORT[big-$t]}" -pass "$PASS" -users big -mode retr -n 1 -c 1 -verify -max 5m)
	log "big $t $out"
	BIG[$t]=$(kb "${PID[big-$t]}" VmHWM)
	stop_popgate "big-$t"

	start_popgate "idle-$t" "$t"
	"$LOAD" -addr "127.0.0.1:${PORT[idle-$t]}" -pass "$PASS" -users idle1 -mode login -n 1 -c 1 >/dev/null
	sleep 1
	IDLEB[$t]=$(kb "${PID[idle-$t]}" VmRSS)
	"$LOAD" -addr "127.0.0.1:${PORT[idle-$t]}" -pass "$PASS" -users 'idle%d' -nusers "$IDLE" -mode idle -sessions "$IDLE" -c 16 -d 10m -max 10m >"$WORK/idle-$t.out" 2>"$WORK/idle-$t.err" &
	lp=$!; PIDS+=("$lp")
	for _ in $(seq 3000); do grep -q '^ready' "$WORK/idle-$t.out" && break; kill -0 "$lp" 2>/dev/null || break; sleep 0.1; done
	sleep 2
	IDLEA[$t]=$(kb "${PID[idle-$t]}" VmRSS)
	ready=$(grep '^ready' "$WORK/idle-$t.out" || echo "ready sessions=0")
	IDLEN[$t]=$(echo " $ready" | field sessions)
	log "idle $t: $ready; popgate RSS ${IDLEB[$t]} kB -> ${IDLEA[$t]} kB"
	kill -TERM "$lp" 2>/dev/null; wait "$lp" 2>/dev/null || true
	stop_popgate "idle-$t"
	IDLEKB[$t]=$(awk -v b="${IDLEB[$t]}" -v a="${IDLEA[$t]}" -v n="${IDLEN[$t]}" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "n/a" }')
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
printf '\npopgate rest vs imap (%s, %s CPUs, loopback; %s messages of %s..%s octets; %s concurrent clients; bcrypt cost %s on both sides; median of %s round(s))\n\n' \
	"$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$MSGS" "$MIN_SIZE" "$MAX_SIZE" "$CONC" "$COST" "$ROUNDS"
echo "| measure | popgate -> maildir-store (rest) | popgate -> Dovecot (imap) | rest/imap |"
echo "|---|---|---|---|"
echo "| login sessions/s, $MSGS-msg maildrops | ${LOGIN[rest]} | ${LOGIN[imap]} | $(ratio "${LOGIN[rest]}" "${LOGIN[imap]}") |"
echo "| retrieval MB/s | ${RETR[rest]} | ${RETR[imap]} | $(ratio "${RETR[rest]}" "${RETR[imap]}") |"
echo "| peak RSS (VmHWM), one $BIG_MB MB message | $(mb "${BIG[rest]}") MB (idle $(mb "${BIGBASE[rest]}") MB) | $(mb "${BIG[imap]}") MB (idle $(mb "${BIGBASE[imap]}") MB) | |"
echo "| RSS per idle session, ${IDLEN[rest]}/${IDLEN[imap]} sessions of $MSGS msgs | ${IDLEKB[rest]} KB | ${IDLEKB[imap]} KB | |"

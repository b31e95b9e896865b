#!/usr/bin/env bash
# scripts/soak.sh: the soak test (issue 13). Not part of CI.
#
#   scripts/soak.sh [DURATION [SAMPLE]]    # default 1h, a sample every 10s
#
# Runs e2e's TestSoak: popgate's engine in front of a private Dovecot, with
# pop3load (login and retr, 2 clients each) and churn clients (RETR+DELE+QUIT
# with new mail appended, DELE then a dropped connection, DELE+RSET+QUIT) for
# DURATION. Every SAMPLE it prints resident memory, goroutines and open files
# of the process running popgate, then pop3load's summaries, a first-quarter
# versus last-quarter comparison, and checks that Dovecot holds exactly the
# messages the workload did not delete (the test fails otherwise).
# Needs what `go test ./e2e` needs (Dovecot; see README "Tests").
set -euo pipefail
DUR="${1:-1h}"
SAMPLE="${2:-10s}"
cd "$(dirname "$0")/.."
POPGATE_SOAK="$DUR" POPGATE_SOAK_SAMPLE="$SAMPLE" exec go test ./e2e -run '^TestSoak$' -count=1 -v -timeout 24h

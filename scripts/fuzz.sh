#!/usr/bin/env bash
# scripts/fuzz.sh: run every Fuzz* target of the module for a given time each
# (issue 13). Not part of CI.
#
#   scripts/fuzz.sh [TIME]      # TIME per target, a go test -fuzztime value; default 10m
#   FUZZ_PARALLEL=1 scripts/fuzz.sh 1m   # fuzzing workers per target (default 2)
#
# A crasher is saved by go test under the package's testdata/fuzz/FuzzX/ and
# replayed by every later `go test` as a corpus entry: commit it with its fix.
# Prints one line per target (executions, new corpus entries, result) and
# exits 1 when any target failed.
set -uo pipefail
TIME="${1:-10m}"
PAR="${FUZZ_PARALLEL:-2}"
cd "$(dirname "$0")/.."
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT
status=0
summary=()
# Targets: every "func FuzzX(f *testing.F)" in a _test.go file of the module.
while read -r file t; do
	pkg="./$(dirname "$file")"
	{
		out="$log/$t.out"
		echo "== $pkg $t ($TIME)"
		go test -run '^$' -fuzz "^${t}\$" -fuzztime "$TIME" -parallel "$PAR" "$pkg" </dev/null >"$out" 2>&1
		rc=$?
		last="$(grep -E 'fuzz: elapsed:' "$out" | tail -1)"
		execs="$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")"
		newc="$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")"
		if [ $rc -eq 0 ]; then
			res=ok
		else
			res=FAIL
			status=1
			if ! grep -E -- '--- FAIL|Failing input written to|panic:|go test -run' "$out" | head -20; then
				tail -15 "$out"
			fi
		fi
		summary+=("$(printf '%-5s %-22s %-22s execs=%-12s new_interesting=%s' "$res" "$pkg" "$t" "${execs:-?}" "${newc:-?}")")
	}
done < <(git ls-files '*_test.go' | xargs grep -HoE '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' | sed -E 's/:func (Fuzz[A-Za-z0-9_]*).*/ \1/' | sort)
echo
echo "== summary (fuzztime $TIME per target, parallel $PAR)"
printf '%s\n' "${summary[@]}"
exit $status

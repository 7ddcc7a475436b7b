#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME (default 30s) each, one after another
# (make fuzz). An optional argument, a regular expression, picks targets by
# name: hack/fuzz.sh 'FuzzParse|FuzzLoad'. FUZZFLAGS adds go test flags
# (e.g. -parallel=1 on a shared machine). A target that finds a failure
# stops the run; its input is in the package's testdata/fuzz/<target>/,
# where it stays as a regression seed once the bug is fixed. See
# docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-30s}
# Go minimizes every input that finds new coverage for up to this long;
# with its 60s default, minimizing took most of a 60s run here (one target
# made 327 runs in 30s, then 171,390 with 1s).
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-1s}
pick=${1:-.}

# The targets: package, then target. Each lives in its package's
# fuzz_test.go, but for the older FuzzAppendChatJSON.
targets=(
	"./pkg/kvevents FuzzDecode"
	"./pkg/openai FuzzParse"
	"./pkg/openai FuzzSetDelete"
	"./pkg/openai FuzzUnquote"
	"./pkg/openai FuzzEventSplitter"
	"./activator FuzzCompleteEvents"
	"./activator FuzzWebSocketMessage"
	"./pkg/stats FuzzDecode"
	"./pkg/kvindex FuzzApply"
	"./queueproxy FuzzEngineMetrics"
	"./queueproxy FuzzUsageOf"
	"./queueproxy FuzzChunkFacts"
	"./pkg/local FuzzLoad"
	"./pkg/prompt FuzzAppendChatJSON"
	"./pkg/tokenizer FuzzLoadBytes"
	"./pkg/tokenizer FuzzEncode"
)

# Every fuzz target of the tree is listed above.
listed=$(printf '%s\n' "${targets[@]}" | awk '{print $2}' | sort)
found=$(git ls-files --cached --others --exclude-standard '*_test.go' | xargs grep -ho '^func Fuzz[A-Za-z0-9_]*' | sed 's/^func //' | sort)
if [[ "$listed" != "$found" ]]; then
	echo "hack/fuzz.sh: the target list differs from the Fuzz functions in the tree:" >&2
	diff <(echo "$listed") <(echo "$found") >&2 || true
	exit 1
fi

corpus() { ls "${1#./}/testdata/fuzz/$2" 2>/dev/null || true; }

for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	[[ "$name" =~ $pick ]] || continue
	echo "== $name ($pkg, $FUZZTIME)"
	before=$(corpus "$pkg" "$name")
	out=$(mktemp)
	rc=0
	# shellcheck disable=SC2086 # FUZZFLAGS is a list of flags
	"$GO" test -run='^$' -fuzz="^${name}\$" -fuzztime="$FUZZTIME" -fuzzminimizetime="$FUZZMINIMIZETIME" \
		${FUZZFLAGS:-} "$pkg" 2>&1 | tee "$out" || rc=$?
	# Go before 1.27 can fail a run that found nothing with "context
	# deadline exceeded" as the time is up (go.dev/issue/75804): a failure
	# only when an input was written.
	if [[ $rc -ne 0 && "$before" == "$(corpus "$pkg" "$name")" ]] && grep -q '^    context deadline exceeded$' "$out"; then
		echo "== $name: stopped by go.dev/issue/75804 with no failing input; counted as passed"
		rc=0
	fi
	rm -f "$out"
	[[ $rc -eq 0 ]] || exit "$rc"
done

#!/usr/bin/env bash
# Beside the campaign workers (benchmarks/campaign.sh): every 15 minutes, commits the run records that
# finished into benchmarks/ledger, so they survive a new checkout (the run cache in runs/ does not).
# The commit message names this machine's CPU: the ledger records carry no hardware of their own.
#
#   nohup benchmarks/ledger-commit.sh >> runs/ledger-commit.log 2>&1 &
MAIN=$(cd "$(dirname "$0")/.." && pwd)
cd "$MAIN" || exit 1
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
cpu="${cpu:-unknown CPU}, $(nproc) cores"
while true; do
    sleep "${LEDGER_COMMIT_SECONDS:-900}"
    git add benchmarks/ledger
    n=$(git diff --cached --name-only -- benchmarks/ledger | wc -l)
    if [ "$n" -gt 0 ]; then
        git commit -q -m "bench ledger: $n finished run record$([ "$n" -eq 1 ] || echo s) (quick campaign; trained on $cpu)" \
            -- benchmarks/ledger && echo "$(date -u +%FT%TZ) committed $n"
    fi
done

#!/usr/bin/env bash
# One worker of the quick-table campaign: runs `semiseg bench TABLE --quick` for each table given,
# from a git worktree pinned at commit $PIN (so that edits of the main checkout do not change the
# code being benchmarked), with one shared run cache and the run ledger committed in this repository
# (benchmarks/ledger: finished runs survive a new checkout). Start it twice, ~20 s apart, for two
# workers; each takes the runs the other does not hold. Progress: `semiseg bench TABLE --quick
# --status --work-dir runs/bench --ledger benchmarks/ledger` from the pinned worktree.
#
#   PIN=<commit> nohup benchmarks/campaign.sh semi-acdc curriculum-acdc > runs/bench/w1.log 2>&1 &
#
# Environment: PIN (required), DATA_ROOT (default ../shared/data next to the checkout), THREADS
# (torch threads per worker, default 1).
set -u
MAIN=$(cd "$(dirname "$0")/.." && pwd)
PIN=${PIN:?set PIN to the commit to benchmark}
WT="$MAIN/runs/campaign-${PIN:0:7}"
DATA_ROOT=${DATA_ROOT:-$(cd "$MAIN/.." && pwd)/shared/data}
mkdir -p "$MAIN/runs/bench"
if [ ! -d "$WT" ]; then
    git -C "$MAIN" worktree add --detach "$WT" "$PIN" >/dev/null 2>&1 || [ -d "$WT" ] || exit 1
fi
export PATH="$MAIN/.venv/bin:$PATH" PYTHONPATH="$WT/src" OMP_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"
cd "$WT" || exit 1
for table in "$@"; do
    echo "== $(date -u +%FT%TZ) $table"
    semiseg bench "$table" --quick --data-root "$DATA_ROOT" --work-dir "$MAIN/runs/bench" \
        --results-dir "$MAIN/runs/bench/results" --ledger "$MAIN/benchmarks/ledger"
    echo "== $(date -u +%FT%TZ) $table exit $?"
done

#!/usr/bin/env bash
# One worker of the quick-table campaign: runs `semiseg bench TABLE --quick` for each table given,
# from a git worktree pinned at a commit (so that edits of the main checkout do not change the code
# being benchmarked), with one shared run cache and the run ledger committed in this repository
# (benchmarks/ledger: finished runs survive a new checkout). Start it twice, ~40 s apart, for two
# workers; each takes the runs the other does not hold. Progress: `semiseg bench TABLE --quick
# --status --work-dir runs/bench --ledger benchmarks/ledger` from the table's pinned worktree.
#
#   PIN=<commit> nohup benchmarks/campaign.sh semi-acdc curriculum-acdc > runs/bench/w1.log 2>&1 &
#
# An argument `@<commit>` pins the tables after it to that commit (each table's rows all come from
# one commit; different tables may come from different ones), e.g.
#
#   benchmarks/campaign.sh @dbb920b semi-acdc tv-horse @1a2b3c4 translation-mnist
#
# A pin `<commit>+bench=<other>` is <commit>'s checkout with src/semiseg/bench (table definitions and
# harness; the training code's hash leaves it out) from <other>: a table whose rows were fixed after
# its first runs keeps them, and its results record the commit as `<commit>+bench@<other>`.
#
# `benchmarks/campaign.sh --plan` runs benchmarks/campaign.plan: one `<commit> <table> ...` line per
# pin, in order (# starts a comment).
#
# `benchmarks/campaign.sh --write <pin> <table> ...` writes finished tables into benchmarks/results
# (from the run cache and the ledger, training nothing that is done) with the workers paused, then
# re-renders each table's Markdown from its JSON with main's renderer.
#
# Environment: PIN (the pin of tables before any @commit), DATA_ROOT (default ../shared/data next to
# the checkout), THREADS (torch threads per worker, default 1).
set -u
MAIN=$(cd "$(dirname "$0")/.." && pwd)
DATA_ROOT=${DATA_ROOT:-$(cd "$MAIN/.." && pwd)/shared/data}
mkdir -p "$MAIN/runs/bench"
export PATH="$MAIN/.venv/bin:$PATH" OMP_NUM_THREADS="${THREADS:-1}" MKL_NUM_THREADS="${THREADS:-1}"

if [ "${1:-}" = "--plan" ]; then
    args=()
    while read -r pin tables; do
        case "$pin" in ''|\#*) continue ;; esac
        args+=("@$pin")
        for t in ${tables%%#*}; do args+=("$t"); done
    done < "$MAIN/benchmarks/campaign.plan"
    set -- "${args[@]}"
fi

pin() {  # the worktree of pin $1 (`<commit>` or `<commit>+bench=<other>`), made on first use
    local commit=${1%%+bench=*} overlay="" wt
    [ "$commit" != "$1" ] && overlay=${1#*+bench=}
    wt="$MAIN/runs/campaign-${commit:0:7}${overlay:+-b${overlay:0:7}}"
    if [ ! -d "$wt" ]; then
        git -C "$MAIN" worktree add --detach "$wt" "$commit" >/dev/null 2>&1 || [ -d "$wt" ] || return 1
        # the table definitions and harness (src/semiseg/bench, outside the training code's hash) of
        # another commit: rows fixed after a table's first runs keep those runs
        if [ -n "$overlay" ]; then git -C "$wt" checkout "$overlay" -- src/semiseg/bench || return 1; fi
    fi
    WT=$wt
    if [ -n "$overlay" ]; then export SEMISEG_BENCH_OVERLAY=${overlay:0:7}; else unset SEMISEG_BENCH_OVERLAY; fi
}

bench() {  # `semiseg bench TABLE ...` from the pinned worktree on the campaign's run cache and ledger
    (cd "$WT" && PYTHONPATH="$WT/src" semiseg bench "$@" --quick --data-root "$DATA_ROOT" \
        --work-dir "$MAIN/runs/bench" --ledger "$MAIN/benchmarks/ledger")
}

progress() {  # "<done>/<total>" runs of table $1 at the current pin (from --status), or "" if it failed
    local summary
    summary=$(bench "$1" --status 2>/dev/null | tail -n 1)
    case "$summary" in *" runs done,"*) echo "${summary%% runs done,*}" ;; *) echo "" ;; esac
}

finished() { [ -n "$1" ] && [ "${1%/*}" = "${1#*/}" ]; }  # $1: progress "<done>/<total>"

if [ "${1:-}" = "--write" ]; then
    # the final write of finished tables into benchmarks/results (committed): every run comes from
    # the cache or the ledger (a table with a run not done is refused before anything is paused); the
    # workers (training into runs/bench) are paused meanwhile, since the tables' extras time steps,
    # and resumed on exit; a run restored from the ledger that a figure needs is trained again
    [ $# -ge 3 ] || { echo "campaign: --write needs a pin and at least one table"; exit 2; }
    pin "$2" || { echo "campaign: cannot make a worktree of $2"; exit 1; }
    shift 2
    for t in "$@"; do
        done_total=$(progress "$t")
        [ -n "$done_total" ] || { echo "campaign: --status of $t failed"; exit 1; }
        if ! finished "$done_total"; then
            echo "campaign: $t is not finished ($done_total runs done); nothing written"; exit 75
        fi
    done
    pids=$(pgrep -f "bin/semiseg bench .*--work-dir $MAIN/runs/bench" | tr '\n' ' ')
    if [ -n "$pids" ]; then trap 'kill -CONT $pids' EXIT; kill -STOP $pids; sleep 5; fi
    status=0
    for t in "$@"; do
        echo "== $(date -u +%FT%TZ) write $t at $(git -C "$WT" rev-parse --short HEAD)${SEMISEG_BENCH_OVERLAY:++bench@$SEMISEG_BENCH_OVERLAY}"
        bench "$t" --results-dir "$MAIN/benchmarks/results"
        rc=$?
        # the Markdown as main's renderer draws it from the JSON (tests/bench/test_render.py checks
        # that every committed .md is that rendering; the pin's renderer may be older)
        if [ $rc -eq 0 ]; then
            PYTHONPATH="$MAIN/src" python "$MAIN/benchmarks/render_results.py" "$MAIN/benchmarks/results/$t.json"
            rc=$?
        fi
        echo "== $(date -u +%FT%TZ) write $t exit $rc"
        [ $status -eq 0 ] && status=$rc
    done
    exit $status
fi

WT=""
if [ -n "${PIN:-}" ]; then pin "$PIN" || exit 1; fi
for arg in "$@"; do
    if [ "${arg:0:1}" = "@" ]; then
        pin "${arg:1}" || { echo "campaign: cannot make a worktree of ${arg:1}"; exit 1; }
        continue
    fi
    if [ -z "$WT" ]; then echo "campaign: no pin for $arg (set PIN or put @<commit> before it)"; exit 1; fi
    # a finished table is skipped (writing it again would only redo its extras' timings and figures)
    done_total=$(progress "$arg")
    if finished "$done_total"; then
        echo "== $(date -u +%FT%TZ) $arg finished ($done_total runs): skipped"
        continue
    fi
    echo "== $(date -u +%FT%TZ) $arg at $(git -C "$WT" rev-parse --short HEAD)"
    bench "$arg" --results-dir "$MAIN/runs/bench/results"
    rc=$?
    echo "== $(date -u +%FT%TZ) $arg exit $rc"
done

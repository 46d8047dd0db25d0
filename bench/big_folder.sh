#!/usr/bin/env bash
# bench/big_folder.sh: one mailbox with one big folder of small messages (100,000 by default)
# on loopback: the full copy, then delta passes — unchanged, 10 new messages, 1,000 flag
# changes — each timed with its peak RSS, plus what the per-message ledger costs in the state
# file, and the full copy's ratio to the time bench/load_corpus.py took to load the same
# messages with MULTIAPPEND (the ceiling). Prints a markdown table (and writes it to --out).
#
# Usage: bench/big_folder.sh [--messages N] [--out FILE] [--no-build] [--keep]
#   --messages N   messages in the big folder (default 100000; ~1 KB each)
#   --out FILE     where the table goes (default bench/BIG_FOLDER.md for >= 100000 messages,
#                  else WORKDIR/BIG_FOLDER.md)
#
# How: `mailhaul-testenv up --users 1` starts a source and a destination Dovecot (maildir, TLS);
# bench/load_corpus.py loads the folder "Big" of source user1 with MULTIAPPEND; each pass is
# `mailhaul run` on the testenv's batch.csv (one row) with one state file, under
# /usr/bin/time -v. The destination must end with exactly the source's messages.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MESSAGES=100000
OUT=""
BUILD=1
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --messages) MESSAGES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "big_folder: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$MESSAGES" =~ ^[0-9]+$ ]] && [ "$MESSAGES" -ge 2000 ] || { echo "big_folder: --messages must be >= 2000" >&2; exit 2; }

log() { echo "big_folder: $*" >&2; }
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
if [ "$BUILD" = 1 ]; then
    log "cargo build --release --no-default-features -p mailhaul -p mailhaul-tests"
    cargo build --release --no-default-features -p mailhaul -p mailhaul-tests
fi
MAILHAUL="$ROOT/target/release/mailhaul"
TESTENV="$ROOT/target/release/mailhaul-testenv"
LOADER="$ROOT/bench/load_corpus.py"

DIR="$(mktemp -d "${TMPDIR:-/tmp}/mailhaul-big.XXXXXX")"
ENV_PID=""
cleanup() {
    status=$?
    if [ -n "$ENV_PID" ] && kill -0 "$ENV_PID" 2>/dev/null; then
        kill -TERM "$ENV_PID" 2>/dev/null || true
        wait "$ENV_PID" 2>/dev/null || true
    fi
    "$TESTENV" down --dir "$DIR" >/dev/null 2>&1 || true
    [ "$KEEP" = 1 ] && log "work directory kept: $DIR" || rm -rf "$DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$TESTENV" up --dir "$DIR" --users 1 --messages 1 >"$DIR/testenv.log" 2>&1 </dev/null &
ENV_PID=$!
for _ in $(seq 1 600); do
    [ -f "$DIR/batch.csv" ] && break
    kill -0 "$ENV_PID" 2>/dev/null || { log "testenv failed:"; cat "$DIR/testenv.log" >&2; exit 2; }
    sleep 0.1
done
[ -f "$DIR/batch.csv" ] || { log "testenv not ready"; exit 2; }
SRC_PORT=$(sed -nE 's/^ *source: +127\.0\.0\.1 imaps ([0-9]+) .*/\1/p' "$DIR/testenv.log")
DST_PORT=$(sed -nE 's/^ *destination: +127\.0\.0\.1 imaps ([0-9]+) .*/\1/p' "$DIR/testenv.log")
IFS=, read -r _ _ _ SRC_USER SRC_PASS _ _ _ DST_USER DST_PASS < <(sed -n 2p "$DIR/batch.csv")
SRC_CA="$DIR/source/ca.pem"
DST_CA="$DIR/destination/ca.pem"
loader() { BENCH_PASS="$SRC_PASS" python3 "$LOADER" "$@" --port "$SRC_PORT" --ca "$SRC_CA" --user "$SRC_USER"; }
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

log "loading $MESSAGES small messages into source $SRC_USER folder Big (MULTIAPPEND)"
loader load --small Big --messages "$MESSAGES" >"$DIR/load.json"
LOAD_SECS="$(json "$DIR/load.json" seconds)"
log "loaded in $LOAD_SECS s"

STATE="$DIR/state.sqlite"
ROWS=()
# One pass: mailhaul run under /usr/bin/time -v; records wall seconds and peak RSS (MB).
pass() {
    local name="$1"
    local code=0
    /usr/bin/time -v -o "$DIR/time.txt" "$MAILHAUL" run "$DIR/batch.csv" --config "$DIR/mailhaul.toml" \
        --state "$STATE" --report-dir "$DIR/report" >"$DIR/run.log" 2>&1 || code=$?
    if [ "$code" != 0 ]; then log "$name: mailhaul exited $code"; tail -20 "$DIR/run.log" >&2; exit 1; fi
    local wall rss
    wall=$(sed -nE 's/.*Elapsed \(wall clock\) time.*: (.*)/\1/p' "$DIR/time.txt" |
        awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }')
    rss=$(sed -nE 's/.*Maximum resident set size \(kbytes\): ([0-9]+)/\1/p' "$DIR/time.txt")
    local copied flags
    copied=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(m["totals"]["copied"] for m in r["mailboxes"]))' "$DIR/report/report.json")
    flags=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(m["totals"].get("flags_updated", 0) for m in r["mailboxes"]))' "$DIR/report/report.json")
    log "$name: ${wall} s, peak RSS $((rss / 1024)) MB"
    LAST_WALL="$wall" LAST_RSS=$((rss / 1024)) LAST_COPIED="$copied" LAST_FLAGS="$flags"
    [ -n "${FULL_SECS:-}" ] || FULL_SECS="$wall"
    ROWS+=("| $name | $wall | $((rss / 1024)) | $copied | $flags |")
}

pass "full copy of $MESSAGES messages"
pass "delta, nothing changed"
# Dovecot's time to open a 100,000-file maildir folder varies from pass to pass (0.2-0.35 s
# per side here): the 10-new delta runs NEW_ROUNDS times, and its row gives the median with
# the range.
NEW_ROUNDS=5
NEW_WALLS=()
for round in $(seq 1 "$NEW_ROUNDS"); do
    loader load --small Big --messages 10 --start $((MESSAGES + 10 * (round - 1))) >/dev/null
    pass "delta, 10 new messages (round $round)"
    NEW_WALLS+=("$LAST_WALL")
    unset 'ROWS[${#ROWS[@]}-1]'
done
read -r NEW_MEDIAN NEW_MIN NEW_MAX < <(printf '%s\n' "${NEW_WALLS[@]}" | sort -g |
    awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)], v[1], v[NR] }')
ROWS+=("| delta, 10 new messages: median of $NEW_ROUNDS (range) | $NEW_MEDIAN ($NEW_MIN–$NEW_MAX) | $LAST_RSS | $LAST_COPIED | $LAST_FLAGS |")
loader flags --small Big --messages 1000 --start "$MESSAGES" >/dev/null
pass "delta, 1,000 flag changes"

# Exactly the source's messages on the destination.
SRC_COUNT=$(loader count | python3 -c 'import json,sys; print(json.load(sys.stdin)["folders"].get("Big", {}).get("messages"))')
DST_COUNT=$(BENCH_PASS="$DST_PASS" python3 "$LOADER" count --port "$DST_PORT" --ca "$DST_CA" --user "$DST_USER" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["folders"].get("Big", {}).get("messages"))')
[ "$SRC_COUNT" = "$DST_COUNT" ] || { log "destination holds $DST_COUNT messages in Big, source $SRC_COUNT"; exit 1; }

# What the ledger costs: the state file with and without its ledger table.
LEDGER=$(python3 - "$STATE" <<'PY'
import os, shutil, sqlite3, sys, tempfile
state = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    copy = os.path.join(tmp, "copy.sqlite")
    src = sqlite3.connect(state)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    # A WAL-mode file keeps VACUUM's work in its log: measure a rollback-journal copy.
    dst.execute("PRAGMA journal_mode = DELETE")
    rows, messages = dst.execute("SELECT count(*), sum(count) FROM ledger").fetchone()
    dst.execute("VACUUM")
    dst.commit()
    with_ledger = os.path.getsize(copy)
    dst.execute("DROP TABLE ledger")
    dst.commit()
    dst.execute("VACUUM")
    without = os.path.getsize(copy)
    dst.close()
print(rows, messages, with_ledger - without)
PY
)
read -r LEDGER_ROWS LEDGER_MESSAGES LEDGER_BYTES <<<"$LEDGER"

TABLE="$(
    echo "### One folder of $MESSAGES small messages, loopback ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- common cli || echo "+changes"), load $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    echo "| pass | seconds | peak RSS MB | copied (all passes) | flags updated (all passes) |"
    echo "|---|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Ceiling: loading the same $MESSAGES messages into the source's empty folder (bench/load_corpus.py," \
        "MULTIAPPEND batches of 500, one connection, a Dovecot configured as the destination) took $LOAD_SECS s;" \
        "mailhaul's full copy (reading them from the source too) took" \
        "$(python3 -c "print(round($FULL_SECS / $LOAD_SECS, 2))")× that (target: within 2×)."
    echo
    echo "Ledger: $LEDGER_ROWS rows for $LEDGER_MESSAGES messages, $LEDGER_BYTES bytes in the state file" \
        "($(python3 -c "print(round($LEDGER_BYTES / $LEDGER_MESSAGES, 2))") bytes per message)."
)"
echo "$TABLE"
if [ -z "$OUT" ]; then
    if [ "$MESSAGES" -ge 100000 ]; then OUT="$ROOT/bench/BIG_FOLDER.md"; else OUT="$DIR/BIG_FOLDER.md"; fi
fi
# Newest first; earlier runs stay below.
{ echo "$TABLE"; if [ -f "$OUT" ]; then echo; cat "$OUT"; fi; } >"$OUT.new" && mv "$OUT.new" "$OUT"
log "table written to $OUT"

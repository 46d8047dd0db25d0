#!/usr/bin/env bash
# bench/one_folder.sh: one mailbox whose mail is nearly all in one folder, copied with one
# connection pair and with several (connections_per_mailbox), on loopback and at an added
# round trip, with MULTIAPPEND and without it (as Exchange Online and Gmail, which lack it).
# Each pair that runs out of folders helps append the big one. Prints a markdown table.
#
# Usage: bench/one_folder.sh [--messages N] [--latency-ms L] [--pairs P] [--out FILE] [--no-build]
#   --messages N    messages in the big folder (default 2000, the bench corpus mix, ~180 MB)
#   --latency-ms L  added round trip of the second half of the runs (default 50)
#   --pairs P       connection pairs compared with one (default 4)
#   --out FILE      where the table goes besides stdout (default bench/ONE_FOLDER.md)
#
# How: `mailhaul-testenv up --latency-ms L` starts a source and a destination Dovecot and two
# delay proxies; bench/load_corpus.py loads the corpus into the source's folder "Big" (the
# testenv's few seeded messages sit in other folders). Each run copies source user1 into its
# own empty destination user and must end done and verified, with Big holding every message.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MESSAGES=2000
LATENCY_MS=50
PAIRS=4
OUT="$ROOT/bench/ONE_FOLDER.md"
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --messages) MESSAGES="$2"; shift 2 ;;
        --latency-ms) LATENCY_MS="$2"; shift 2 ;;
        --pairs) PAIRS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "one_folder: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "one_folder: $*" >&2; }
if [ "$BUILD" = 1 ]; then
    log "cargo build --release --no-default-features -p mailhaul -p mailhaul-tests"
    cargo build --release --no-default-features -p mailhaul -p mailhaul-tests
fi
MAILHAUL="$ROOT/target/release/mailhaul"
TESTENV="$ROOT/target/release/mailhaul-testenv"
LOADER="$ROOT/bench/load_corpus.py"

DIR="$(mktemp -d "${TMPDIR:-/tmp}/mailhaul-one.XXXXXX")"
ENV_PID=""
cleanup() {
    status=$?
    if [ -n "$ENV_PID" ] && kill -0 "$ENV_PID" 2>/dev/null; then
        kill -TERM "$ENV_PID" 2>/dev/null || true
        wait "$ENV_PID" 2>/dev/null || true
    fi
    "$TESTENV" down --dir "$DIR" >/dev/null 2>&1 || true
    rm -rf "$DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$TESTENV" up --dir "$DIR" --users 8 --messages 1 --latency-ms "$LATENCY_MS" >"$DIR/testenv.log" 2>&1 </dev/null &
ENV_PID=$!
for _ in $(seq 1 600); do
    [ -f "$DIR/batch.csv" ] && break
    kill -0 "$ENV_PID" 2>/dev/null || { log "testenv failed:"; cat "$DIR/testenv.log" >&2; exit 2; }
    sleep 0.1
done
[ -f "$DIR/batch.csv" ] || { log "testenv not ready"; exit 2; }
SRC_DIRECT=$(sed -nE 's/^ *source: +127\.0\.0\.1 imaps ([0-9]+) .*/\1/p' "$DIR/testenv.log")
DST_DIRECT=$(sed -nE 's/^ *destination: +127\.0\.0\.1 imaps ([0-9]+) .*/\1/p' "$DIR/testenv.log")
IFS=, read -r _ SRC_PROXY _ SRC_USER SRC_PASS _ DST_PROXY _ _ _ < <(sed -n 2p "$DIR/batch.csv")
dst_field() { sed -n "$(( $1 + 1 ))p" "$DIR/batch.csv" | cut -d, -f"$2"; }
SRC_CA="$DIR/source/ca.pem"
DST_CA="$DIR/destination/ca.pem"

log "loading $MESSAGES messages into source $SRC_USER folder Big"
BENCH_PASS="$SRC_PASS" python3 "$LOADER" load --port "$SRC_DIRECT" --ca "$SRC_CA" --user "$SRC_USER" \
    --messages "$MESSAGES" --folder Big >"$DIR/load.json"
MB=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["bytes"] / 1e6))' "$DIR/load.json")

ROWS=()
declare -A RATE
N=0
# run RTT_LABEL SRC_PORT DST_PORT PAIRS MULTIAPPEND: copy source user1 into the next destination user.
run() {
    local rtt=$1 sport=$2 dport=$3 pairs=$4 multi=$5
    N=$((N + 1))
    local run="$DIR/run-$N" duser dpass
    duser=$(dst_field "$N" 9); dpass=$(dst_field "$N" 10)
    mkdir -p "$run"
    { head -1 "$DIR/batch.csv"; echo "127.0.0.1,$sport,tls,$SRC_USER,$SRC_PASS,127.0.0.1,$dport,tls,$duser,$dpass"; } >"$run/batch.csv"
    { cat "$DIR/mailhaul.toml"; printf '\n[copy]\nconnections_per_mailbox = %s\nmultiappend = %s\n' "$pairs" "$multi"; } >"$run/mailhaul.toml"
    log "RTT $rtt, $pairs pair(s), multiappend $multi"
    local start end code=0
    start=$(date +%s.%N)
    "$MAILHAUL" run "$run/batch.csv" --config "$run/mailhaul.toml" --state "$run/state.sqlite" \
        --report-dir "$run/report" >"$run/out.log" 2>&1 </dev/null || code=$?
    end=$(date +%s.%N)
    [ "$code" = 0 ] || { log "mailhaul exited $code"; tail -20 "$run/out.log" >&2; exit 1; }
    local got
    got=$(BENCH_PASS="$dpass" python3 "$LOADER" count --port "$DST_DIRECT" --ca "$DST_CA" --user "$duser" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["folders"].get("Big", {}).get("messages"))')
    [ "$got" = "$MESSAGES" ] || { log "destination Big holds $got of $MESSAGES"; exit 1; }
    local secs rate
    secs=$(python3 -c "print(round($end - $start, 1))")
    rate=$(python3 -c "print(round($MESSAGES / ($end - $start) * 60))")
    RATE["$rtt/$multi/$pairs"]=$rate
    log "  $secs s, $rate messages/min"
    ROWS+=("| $rtt | $multi | $pairs | $secs | $rate |")
}

for multi in true false; do
    run "0 ms" "$SRC_DIRECT" "$DST_DIRECT" 1 "$multi"
    run "0 ms" "$SRC_DIRECT" "$DST_DIRECT" "$PAIRS" "$multi"
done
for multi in true false; do
    run "$LATENCY_MS ms" "$SRC_PROXY" "$DST_PROXY" 1 "$multi"
    run "$LATENCY_MS ms" "$SRC_PROXY" "$DST_PROXY" "$PAIRS" "$multi"
done

ratio() { python3 -c "print(round($1 / $2, 2))"; }
TABLE="$(
    echo "### One folder of $MESSAGES messages ($MB MB), 1 vs $PAIRS connection pairs ($(date -u +%Y-%m-%d), $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- common cli || echo "+changes"), load $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    echo "| added RTT | MULTIAPPEND | pairs | seconds | messages/min |"
    echo "|---|---|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "$PAIRS pairs / 1 pair: $(ratio "${RATE[0 ms/true/$PAIRS]}" "${RATE[0 ms/true/1]}")× on loopback," \
        "$(ratio "${RATE[0 ms/false/$PAIRS]}" "${RATE[0 ms/false/1]}")× on loopback without MULTIAPPEND," \
        "$(ratio "${RATE[$LATENCY_MS ms/true/$PAIRS]}" "${RATE[$LATENCY_MS ms/true/1]}")× at $LATENCY_MS ms RTT," \
        "$(ratio "${RATE[$LATENCY_MS ms/false/$PAIRS]}" "${RATE[$LATENCY_MS ms/false/1]}")× at $LATENCY_MS ms RTT without MULTIAPPEND."
)"
echo "$TABLE"
{ echo "$TABLE"; if [ -f "$OUT" ]; then echo; cat "$OUT"; fi; } >"$OUT.new" && mv "$OUT.new" "$OUT"
log "table written to $OUT"

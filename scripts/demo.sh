#!/usr/bin/env bash
# The README's first command: build mailhaul, start a local source and destination Dovecot
# (seeded source), migrate every mailbox with `mailhaul run`, print the report, clean up.
# Installs dovecot-imapd and openssl when missing (scripts/setup.sh). Usage: scripts/demo.sh [--users N] [--messages M] [--latency-ms L]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh --imap-only

echo "demo: building (cargo build --release --no-default-features -p mailhaul -p mailhaul-tests)" >&2
cargo build --release --no-default-features -p mailhaul -p mailhaul-tests

DIR="$(mktemp -d "${TMPDIR:-/tmp}/mailhaul-demo.XXXXXX")"
TESTENV="$ROOT/target/release/mailhaul-testenv"
MAILHAUL="$ROOT/target/release/mailhaul"
ENV_PID=""

cleanup() {
    status=$?
    if [ -n "$ENV_PID" ] && kill -0 "$ENV_PID" 2>/dev/null; then
        kill -TERM "$ENV_PID" 2>/dev/null || true
        wait "$ENV_PID" 2>/dev/null || true
    fi
    "$TESTENV" down --dir "$DIR" >/dev/null 2>&1 || true
    echo "demo: servers stopped; files kept in $DIR" >&2
    exit "$status"
}
trap cleanup EXIT INT TERM

echo "demo: starting the test servers in $DIR" >&2
"$TESTENV" up --dir "$DIR" "$@" >"$DIR/testenv.log" 2>&1 &
ENV_PID=$!

for _ in $(seq 1 600); do
    [ -f "$DIR/batch.csv" ] && break
    if ! kill -0 "$ENV_PID" 2>/dev/null; then
        echo "demo: the test environment failed to start:" >&2
        cat "$DIR/testenv.log" >&2
        exit 2
    fi
    sleep 0.1
done
if [ ! -f "$DIR/batch.csv" ]; then
    echo "demo: the test environment did not get ready within 60 s:" >&2
    cat "$DIR/testenv.log" >&2
    exit 2
fi
cat "$DIR/testenv.log" >&2

echo "demo: $MAILHAUL run $DIR/batch.csv --config $DIR/mailhaul.toml --state $DIR/state.sqlite --report-dir $DIR/report" >&2
set +e
"$MAILHAUL" run "$DIR/batch.csv" --config "$DIR/mailhaul.toml" \
    --state "$DIR/state.sqlite" --report-dir "$DIR/report"
run_status=$?
set -e

if [ -f "$DIR/report/report.csv" ]; then
    echo "demo: $DIR/report/report.csv" >&2
    cat "$DIR/report/report.csv"
else
    echo "demo: no report was written to $DIR/report/report.csv" >&2
fi
exit "$run_status"

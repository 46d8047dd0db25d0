#!/usr/bin/env bash
# A 1,000-row batch through the three real function binaries behind `cargo lambda watch`
# (issue 8, item 7), driven with S3 and SQS event JSON as AWS drives them, against moto and
# two Dovecots: prints seconds for the upload and for the whole batch. The same test with
# 100 rows runs with every `cargo test`; this one takes about 25 minutes on moto (its
# TransactWriteItems deep-copies every table, and a finished mailbox is one), hence here.
# Usage: bench/thousand_rows.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v moto_server >/dev/null || { echo "moto_server not found: run scripts/setup.sh" >&2; exit 1; }
log=$(mktemp)
status=0
cargo test -p mailhaul-aws --test pipeline a_batch_of_a_thousand_rows -- --ignored --nocapture >"$log" 2>&1 || status=$?
grep -E "rows through the real binaries|^test |panicked" "$log" || tail -30 "$log"
echo "commit $(git rev-parse --short HEAD), $(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$log"
exit "$status"

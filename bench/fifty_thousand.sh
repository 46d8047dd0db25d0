#!/usr/bin/env bash
# The serverless upload and finalize functions on big batches, against moto (issue 8, item 4):
# prints seconds for each. moto's DynamoDB Query reads every item of the table on each call
# (DynamoDB reads one partition), which makes plain moto quadratic in the rows:
# bench/moto/moto_server is moto with that one call reading the partition it names, put
# first on PATH here (MAILHAUL_PLAIN_MOTO=1 runs plain moto). bench/SERVERLESS.md has figures.
# Usage: bench/fifty_thousand.sh [ROWS...]   (default: 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v moto_server >/dev/null || { echo "moto_server not found: run scripts/setup.sh" >&2; exit 1; }
[ "$#" -gt 0 ] || set -- 50000
[ -n "${MAILHAUL_PLAIN_MOTO:-}" ] || PATH="$PWD/bench/moto:$PATH"
# The dev profile: the time is moto's, and the dev build is already there after the tests.
for rows in "$@"; do
    cargo run --quiet -p mailhaul-aws --example fifty_thousand -- "$rows"
done

#!/usr/bin/env bash
# The serverless upload and finalize functions on big batches, against moto (issue 8, item 4):
# prints seconds for each. moto's DynamoDB gets slower with every item the table holds (each
# call costs time in proportion to the table), so this runs a few sizes to show the trend;
# bench/SERVERLESS.md turns the calls per row into an estimate for DynamoDB and SQS.
# Usage: bench/fifty_thousand.sh [ROWS...]   (default: 500 1000 2000; 50000 takes hours on moto)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v moto_server >/dev/null || { echo "moto_server not found: run scripts/setup.sh" >&2; exit 1; }
[ "$#" -gt 0 ] || set -- 500 1000 2000
# The dev profile: the time is moto's, and the dev build is already there after the tests.
for rows in "$@"; do
    cargo run --quiet -p mailhaul-aws --example fifty_thousand -- "$rows"
done

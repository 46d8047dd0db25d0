#!/usr/bin/env bash
# One big mailbox through copy functions with time-boxed passes (issue 8, item 5): copied
# whole, as one chain of passes, and split across functions, its parts side by side. In
# process against moto and two Dovecots behind a delay proxy; prints the seconds of each.
# Usage: bench/split.sh [MESSAGES_PER_FOLDER] [RTT_MS] [PASS_SECONDS] [FUNCTIONS] [FOLDERS]
#        (default: 400 50 4 4 4; FOLDERS 1: one big folder, which the split copies in UID ranges)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v moto_server >/dev/null || { echo "moto_server not found: run scripts/setup.sh" >&2; exit 1; }
cargo run --quiet -p mailhaul-aws --example split -- "$@"
echo "commit $(git rev-parse --short HEAD), $(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# bench/run.sh: mailhaul against mbsync (Debian isync, PipelineDepth 50) on the same corpus, in
# the same run, on loopback and through a delay proxy adding --latency-ms of round trip.
#
# Usage: bench/run.sh [--messages N] [--latency-ms L] [--copy KEY=VALUE]... [--out FILE]
#                     [--no-build] [--keep]
#   --messages N     corpus size (default 5000; use ~300 for a dry run)
#   --latency-ms L   added round trip for the second pair of runs (default 50)
#   --bandwidth-mbit B  the proxies also limit each direction to B Mbit/s, shared by all
#                    connections as on one uplink (default 0: no limit); e.g. to see whether
#                    COMPRESS pays on a link that is short of bandwidth
#   --rounds R       repeat the four runs R times (default 1): this machine is shared and the
#                    same run varies a lot, so compare tools within a round
#   --copy K=V       extra line for mailhaul.toml's [copy] table, e.g. --copy batch_messages=400
#   --out FILE       where the markdown table goes (default bench/RESULTS.md for a full
#                    corpus of >= 5000 messages, else WORKDIR/RESULTS.md)
#   --no-ceiling     skip bench/ceiling.sh (COMPRESS on/off, dsync, the APPEND/MULTIAPPEND
#                    ceiling, 20 mailboxes with workers=4 vs 1)
#   --batch-messages M  messages in each of the 20 mailboxes of the workers scenario
#                    (default messages / 20, at least 50)
#   --no-build       skip `cargo build --release`
#   --keep           keep the work directory (servers, logs, mail) after the run
#
# How: `mailhaul-testenv up --users 4 --latency-ms L` starts a source and a destination Dovecot
# (TLS with a private CA) and two delay proxies; bench/load_corpus.py appends the corpus to the
# source's user1 over IMAPS. Each of the four runs (mailhaul/mbsync x loopback/latency) copies
# source user1 into its own empty destination user (user1..user4 on the destination), timed by
# /usr/bin/time -v (peak RSS), then the destination is counted folder by folder and must hold
# exactly as many messages as the source. Both tools use TLS and verify the certificate.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MESSAGES=5000
LATENCY_MS=50
BANDWIDTH_MBIT=0
ROUNDS=1
BUILD=1
KEEP=0
CEILING=1
BATCH_MESSAGES=""
OUT=""
COPY_LINES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --messages) MESSAGES="$2"; shift 2 ;;
        --latency-ms) LATENCY_MS="$2"; shift 2 ;;
        --bandwidth-mbit) BANDWIDTH_MBIT="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --copy) COPY_LINES+=("$2"); shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-ceiling) CEILING=0; shift ;;
        --batch-messages) BATCH_MESSAGES="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$MESSAGES" =~ ^[0-9]+$ ]] || [ "$MESSAGES" -lt 1 ]; then
    echo "bench: --messages must be a positive integer" >&2; exit 2
fi
if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || [ "$ROUNDS" -lt 1 ]; then
    echo "bench: --rounds must be a positive integer" >&2; exit 2
fi
if ! [[ "$BANDWIDTH_MBIT" =~ ^[0-9]+$ ]]; then
    echo "bench: --bandwidth-mbit must be a non-negative integer" >&2; exit 2
fi
if ! [[ "$LATENCY_MS" =~ ^[0-9]+$ ]] || [ "$LATENCY_MS" -lt 2 ]; then
    echo "bench: --latency-ms must be an integer >= 2" >&2; exit 2
fi

log() { echo "bench: $*" >&2; }

# --- 1. tools ---------------------------------------------------------------------------------
missing=()
command -v mbsync >/dev/null || missing+=(isync)
[ -x /usr/bin/time ] || missing+=(time)
command -v dovecot >/dev/null || missing+=(dovecot-imapd)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$BUILD" = 1 ]; then
    log "cargo build --release --no-default-features -p mailhaul -p mailhaul-tests"
    cargo build --release --no-default-features -p mailhaul -p mailhaul-tests
fi
MAILHAUL="$ROOT/target/release/mailhaul"
TESTENV="$ROOT/target/release/mailhaul-testenv"
LOADER="$ROOT/bench/load_corpus.py"
for bin in "$MAILHAUL" "$TESTENV"; do
    [ -x "$bin" ] || { log "$bin is missing: run without --no-build"; exit 2; }
done

# --- 2. servers and corpus --------------------------------------------------------------------
DIR="$(mktemp -d "${TMPDIR:-/tmp}/mailhaul-bench.XXXXXX")"
ENV_PID=""
cleanup() {
    status=$?
    if [ -n "$ENV_PID" ] && kill -0 "$ENV_PID" 2>/dev/null; then
        kill -TERM "$ENV_PID" 2>/dev/null || true
        wait "$ENV_PID" 2>/dev/null || true
    fi
    "$TESTENV" down --dir "$DIR" >/dev/null 2>&1 || true
    if [ "$KEEP" = 1 ]; then
        log "servers stopped; work directory kept: $DIR"
    else
        rm -rf "$DIR"
        log "servers stopped; work directory removed"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting Dovecots and ${LATENCY_MS} ms proxies in $DIR"
# bench/ceiling.sh needs 6 more destination users, and 20 more on each side for
# its batch scenario; both servers then offer COMPRESS=DEFLATE (mailhaul's default
# leaves it off).
USERS=$(( 4 * ROUNDS ))
TESTENV_FLAGS=()
if [ "$CEILING" = 1 ]; then
    USERS=$(( 4 * ROUNDS + 6 + 20 ))
    TESTENV_FLAGS=(--deflate)
fi
"$TESTENV" up --dir "$DIR" --users "$USERS" --messages 1 --latency-ms "$LATENCY_MS" --bandwidth-mbit "$BANDWIDTH_MBIT" "${TESTENV_FLAGS[@]}" \
    >"$DIR/testenv.log" 2>&1 </dev/null &
ENV_PID=$!
for _ in $(seq 1 600); do
    [ -f "$DIR/batch.csv" ] && break
    kill -0 "$ENV_PID" 2>/dev/null || { log "testenv failed:"; cat "$DIR/testenv.log" >&2; exit 2; }
    sleep 0.1
done
[ -f "$DIR/batch.csv" ] || { log "testenv not ready within 60 s"; cat "$DIR/testenv.log" >&2; exit 2; }

# Direct ports from the testenv banner, proxied ports and credentials from its batch.csv.
SRC_DIRECT=$(sed -nE 's/^ *source: +127\.0\.0\.1 imaps ([0-9]+) .*/\1/p' "$DIR/testenv.log")
DST_DIRECT=$(sed -nE 's/^ *destination: +127\.0\.0\.1 imaps ([0-9]+) .*/\1/p' "$DIR/testenv.log")
IFS=, read -r _ SRC_PROXY _ SRC_USER SRC_PASS _ DST_PROXY _ _ _ < <(sed -n 2p "$DIR/batch.csv")
[ -n "$SRC_DIRECT" ] && [ -n "$DST_DIRECT" ] && [ -n "$SRC_PROXY" ] && [ -n "$DST_PROXY" ] ||
    { log "cannot read ports from $DIR/testenv.log / batch.csv"; exit 2; }
dst_user() { sed -n "$(( $1 + 1 ))p" "$DIR/batch.csv" | cut -d, -f9; }
dst_pass() { sed -n "$(( $1 + 1 ))p" "$DIR/batch.csv" | cut -d, -f10; }
SRC_CA="$DIR/source/ca.pem"
DST_CA="$DIR/destination/ca.pem"

log "loading $MESSAGES messages into source $SRC_USER (bench/load_corpus.py, pipelined APPEND)"
BENCH_PASS="$SRC_PASS" python3 "$LOADER" load --port "$SRC_DIRECT" --ca "$SRC_CA" \
    --user "$SRC_USER" --messages "$MESSAGES" >"$DIR/load.json"
log "loaded: $(cat "$DIR/load.json")"
BENCH_PASS="$SRC_PASS" python3 "$LOADER" count --port "$SRC_DIRECT" --ca "$SRC_CA" \
    --user "$SRC_USER" >"$DIR/source.json"
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
SRC_MESSAGES=$(json "$DIR/source.json" messages)
SRC_BYTES=$(json "$DIR/source.json" bytes)
log "source $SRC_USER holds $SRC_MESSAGES messages, $SRC_BYTES bytes"

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
# --- 3-5. the runs ----------------------------------------------------------------------------
RESULTS=()   # markdown rows
FAILED=0

declare -A SECS   # seconds by "tool@rtt", for the ratios

# Bytes the delay proxies carried so far (0 before the testenv wrote its first count).
wire_bytes() { cat "$DIR/wire-bytes" 2>/dev/null || echo 0; }

# row TOOL RTT MESSAGES BYTES SECONDS RSS_KB WIRE_BYTES VERIFIED: one markdown row.
row() {
    awk -v tool="$1" -v rtt="$2" -v n="$3" -v b="$4" -v s="$5" -v rss="$6" -v w="$7" -v v="$8" \
        'BEGIN { r = "-"; if (rss != "") r = sprintf("%.0f", rss / 1024)
                 m = "-"; if (w > 0) m = sprintf("%.0f", w / 1e6)
                 printf "| %s | %s | %d | %.0f | %.1f | %.0f | %.2f | %s | %s | %s |", tool, rtt, n, b / 1e6, s, n / s * 60, b / 1e6 / s, r, m, v }'
}

# run_mailhaul RUN_DIR: `mailhaul run` of RUN_DIR/batch.csv with RUN_DIR/mailhaul.toml under
# /usr/bin/time; sets RUN_STATUS, RUN_START, RUN_END.
run_mailhaul() {
    local run=$1
    RUN_START=$(date +%s.%N)
    set +e
    MAILHAUL_LOG="${MAILHAUL_LOG:-info}" /usr/bin/time -v -o "$run/time.txt" "$MAILHAUL" run "$run/batch.csv" \
        --config "$run/mailhaul.toml" --state "$run/state.sqlite" --report-dir "$run/report" \
        >"$run/stdout.log" 2>"$run/stderr.log" </dev/null
    RUN_STATUS=$?
    set -e
    RUN_END=$(date +%s.%N)
}

# run_one TOOL RTT_LABEL SRC_PORT DST_PORT N: copy source user1 into destination user N.
# TOOL: mailhaul, mailhaul-compress, mailhaul-nocompress, mbsync, dsync (bench/ceiling.sh).
run_one() {
    local tool=$1 rtt=$2 sport=$3 dport=$4 n=$5
    local duser dpass run start end status
    duser=$(dst_user "$n"); dpass=$(dst_pass "$n")
    run="$DIR/run-$n-$tool"
    log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    mkdir -p "$run"
    log "$tool, RTT $rtt: $SRC_USER -> destination $duser"
    local wire_before
    wire_before=$(wire_bytes)
    if [ "$tool" = dsync ]; then
        dsync_one "$run" "$sport" "$duser"
        status=$DSYNC_STATUS; start=$DSYNC_START; end=$DSYNC_END
    elif [[ "$tool" == mailhaul* ]]; then
        {
            echo "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password"
            echo "127.0.0.1,$sport,tls,$SRC_USER,$SRC_PASS,127.0.0.1,$dport,tls,$duser,$dpass"
        } >"$run/batch.csv"
        chmod 600 "$run/batch.csv"
        # mailhaul-compress / mailhaul-nocompress: COMPRESS=DEFLATE forced on / off on both
        # sides (plain `mailhaul` keeps the default, off).
        local compress=""
        case "$tool" in
            mailhaul-compress) compress='compress = "on"' ;;
            mailhaul-nocompress) compress='compress = "off"' ;;
        esac
        { if [ -n "$compress" ]; then sed "/^ca_file = /a $compress" "$DIR/mailhaul.toml"; else cat "$DIR/mailhaul.toml"; fi; echo; echo "[copy]"; printf '%s\n' "${COPY_LINES[@]+"${COPY_LINES[@]}"}"; } >"$run/mailhaul.toml"
        run_mailhaul "$run"
        status=$RUN_STATUS; start=$RUN_START; end=$RUN_END
    else
        mkdir -p "$run/state"
        # Exactly the source's folders: with `Patterns *` mbsync also pairs the destination's
        # own empty Sent/Trash/Junk with missing source boxes and exits 1.
        local patterns
        patterns=$(python3 -c 'import json,sys; print(" ".join(chr(34) + n + chr(34) for n in json.load(open(sys.argv[1]))["folders"]))' "$DIR/source.json")
        # Passwords come from the environment through PassCmd: never written to the config.
        # Host localhost: mbsync matches the certificate's DNS names only, not its IP address
        # (the test certificate names both localhost and 127.0.0.1; /etc/hosts must map
        # localhost to 127.0.0.1, where the servers listen).
        cat >"$run/mbsyncrc" <<EOF
IMAPAccount src
Host localhost
Port $sport
User $SRC_USER
PassCmd "printenv BENCH_SRC_PASS"
SSLType IMAPS
CertificateFile $SRC_CA
PipelineDepth 50
Timeout 300

IMAPStore src
Account src

IMAPAccount dst
Host localhost
Port $dport
User $duser
PassCmd "printenv BENCH_DST_PASS"
SSLType IMAPS
CertificateFile $DST_CA
PipelineDepth 50
Timeout 300

IMAPStore dst
Account dst

Channel bench
Far :src:
Near :dst:
Patterns $patterns
Sync Pull
Create Near
Remove None
Expunge None
CopyArrivalDate yes
SyncState $run/state/
EOF
        start=$(date +%s.%N)
        set +e
        BENCH_SRC_PASS="$SRC_PASS" BENCH_DST_PASS="$dpass" /usr/bin/time -v -o "$run/time.txt" \
            mbsync -c "$run/mbsyncrc" bench >"$run/stdout.log" 2>"$run/stderr.log" </dev/null
        status=$?
        set -e
        end=$(date +%s.%N)
    fi
    local secs rss_kb count_json got got_bytes verified wire
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    rss_kb=$(sed -nE 's/^\s*Maximum resident set size \(kbytes\): ([0-9]+)/\1/p' "$run/time.txt")
    # The proxies publish their count every 100 ms.
    sleep 0.3
    wire=$(( $(wire_bytes) - wire_before ))
    count_json="$run/destination.json"
    BENCH_PASS="$dpass" python3 "$LOADER" count --port "$DST_DIRECT" --ca "$DST_CA" \
        --user "$duser" >"$count_json"
    got=$(json "$count_json" messages)
    got_bytes=$(json "$count_json" bytes)
    if [ "$status" = 0 ] && [ "$got" = "$SRC_MESSAGES" ]; then
        verified="yes"
    else
        verified="NO (exit $status, $got of $SRC_MESSAGES)"
        FAILED=1
        log "$tool at $rtt did not copy everything: exit $status, $got of $SRC_MESSAGES messages; last log lines:"
        tail -n 5 "$run/stderr.log" >&2
    fi
    log "$tool at $rtt: ${secs} s, $got messages ($got_bytes bytes) on the destination, peak RSS ${rss_kb} KB"
    SECS[$tool@$rtt]=$secs
    RESULTS+=("$(row "$tool" "$rtt" "$got" "$SRC_BYTES" "$secs" "$rss_kb" "$wire" "$verified")")
    # The copy is verified: free the disk it used.
    rm -rf "$DIR/destination/home/$duser/Maildir" 2>/dev/null || true
}

for round in $(seq 1 "$ROUNDS"); do
    n=$(( 4 * (round - 1) ))
    if [ $(( round % 2 )) = 1 ]; then
        run_one mailhaul "0 ms" "$SRC_DIRECT" "$DST_DIRECT" $(( n + 1 ))
        run_one mbsync "0 ms" "$SRC_DIRECT" "$DST_DIRECT" $(( n + 2 ))
        run_one mailhaul "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY" $(( n + 3 ))
        run_one mbsync "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY" $(( n + 4 ))
    else
        # Even rounds go the other way round, so neither tool always runs first.
        run_one mbsync "0 ms" "$SRC_DIRECT" "$DST_DIRECT" $(( n + 1 ))
        run_one mailhaul "0 ms" "$SRC_DIRECT" "$DST_DIRECT" $(( n + 2 ))
        run_one mbsync "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY" $(( n + 3 ))
        run_one mailhaul "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY" $(( n + 4 ))
    fi
done

EXTRA_NOTES=()
if [ "$CEILING" = 1 ]; then
    # shellcheck source=bench/ceiling.sh
    source "$ROOT/bench/ceiling.sh"
fi

# --- 6. table ---------------------------------------------------------------------------------
if [ -z "$OUT" ]; then
    if [ "$MESSAGES" -ge 5000 ]; then OUT="$ROOT/bench/RESULTS.md"; else OUT="$DIR/RESULTS.md"; fi
fi
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo "## Run at $COMMIT"
    echo
    echo "Run on $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/run.sh --messages $MESSAGES --latency-ms $LATENCY_MS$([ "$BANDWIDTH_MBIT" = 0 ] || echo " --bandwidth-mbit $BANDWIDTH_MBIT") --rounds $ROUNDS${BATCH_MESSAGES:+ --batch-messages $BATCH_MESSAGES}${COPY_LINES[*]:+ --copy ${COPY_LINES[*]}}\`"
    echo "at mailhaul commit $COMMIT; machine: $(nproc) cores (shared with other work),"
    echo "$(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo), Dovecot $(dovecot --version | cut -d' ' -f1) on both sides, $(mbsync --version | head -1)."
    echo
    echo "Corpus (bench/load_corpus.py, deterministic): $SRC_MESSAGES messages, $(awk -v b="$SRC_BYTES" 'BEGIN { printf "%.0f", b / 1e6 }') MB in one"
    echo "mailbox (INBOX, Archive/2019, Sent Items and a few small sample folders), 85% text of 2-20 KB,"
    echo "15% with a 50 KB-2 MB attachment. Each run copies it over IMAPS into an empty destination"
    echo "mailbox; RTT is the round trip added by a delay proxy in front of both servers$([ "$BANDWIDTH_MBIT" = 0 ] || echo ", which also"
    [ "$BANDWIDTH_MBIT" = 0 ] || echo "limit each direction to $BANDWIDTH_MBIT Mbit/s, shared by all connections (one uplink)")."
    echo "MB = 10^6 bytes of source messages; peak RSS is /usr/bin/time's maximum resident set size"
    echo "(MiB); \"verified\" = exit status 0 and the destination holds as many messages as the source."
    echo "One row per run, in the order run; load average when the runs started: $LOAD_AT_START."
    echo
    echo "| tool | RTT | messages | MB | seconds | msg/min | MB/s | peak RSS MB | wire MB | verified |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${RESULTS[@]}"
    if [ "$CEILING" = 1 ]; then
        echo
        printf '%s\n' "${EXTRA_NOTES[@]}"
    fi
} >"$OUT.run"
# Newest first under the title; earlier runs stay below.
{
    echo "# mailhaul benchmark"
    echo
    cat "$OUT.run"
    if [ -f "$OUT" ]; then
        echo
        sed '1{/^# mailhaul benchmark$/d}' "$OUT" | sed '1{/^$/d}'
    fi
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo
cat "$OUT.run"
rm -f "$OUT.run"
echo
log "table written to $OUT"
exit "$FAILED"

# bench/ceiling.sh: sourced by bench/run.sh after its mailhaul/mbsync runs, on the same servers
# and corpus (it uses run.sh's variables and functions). Adds rows for:
#   * mailhaul with COMPRESS=DEFLATE forced on, then off, at the added RTT (wire MB = bytes the
#     delay proxies carried, TLS included);
#   * Dovecot dsync (`doveadm backup -R` with an imapc source, from Debian's dovecot-core): it
#     reads the source over IMAPS and writes the destination's maildir directly, no IMAP there;
#   * the ceiling of an IMAP client: bench/load_corpus.py with the corpus already in memory,
#     pipelined single APPENDs (LITERAL+) and MULTIAPPEND batches of 200, into an empty
#     destination user on loopback;
#   * 20 mailboxes in one `mailhaul run`, workers=4 against workers=1, at 0 ms and the added RTT.
# and notes with mailhaul's ratios to the ceiling and to dsync.

declare -A RATE   # messages per second by "tool@rtt"

# src_user I / src_pass I: source user I from the testenv's batch.csv.
src_user() { sed -n "$(( $1 + 1 ))p" "$DIR/batch.csv" | cut -d, -f4; }
src_pass() { sed -n "$(( $1 + 1 ))p" "$DIR/batch.csv" | cut -d, -f5; }

# A missing or zero figure (a run that failed) gives "n/a", not awk's division by zero.
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s + 0 == 0) print "n/a"; else printf "%.3f", n / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "n/a") print "n/a"; else printf "%.2f", a / b }'; }

# dsync_one RUN_DIR SRC_PORT DEST_USER: pull source user1 into DEST_USER with doveadm backup -R.
# The imapc password goes in a root-only config file, not on the command line.
dsync_one() {
    local run=$1 sport=$2 duser=$3
    cat >"$run/dsync.conf" <<EOF
!include $DIR/destination/dovecot.conf
imapc_host = localhost
imapc_port = $sport
imapc_ssl = imaps
imapc_user = $SRC_USER
imapc_password = $SRC_PASS
imapc_features = rfc822.size fetch-headers
ssl_client_ca_file = $SRC_CA
mail_prefetch_count = 20
EOF
    chmod 600 "$run/dsync.conf"
    DSYNC_START=$(date +%s.%N)
    set +e
    /usr/bin/time -v -o "$run/time.txt" doveadm -c "$run/dsync.conf" backup -R -u "$duser" imapc: \
        >"$run/stdout.log" 2>"$run/stderr.log" </dev/null
    DSYNC_STATUS=$?
    set -e
    DSYNC_END=$(date +%s.%N)
}

# ceiling_one MULTIAPPEND N: the corpus (not the testenv's 6 sample messages) into destination
# user N straight from memory; MULTIAPPEND 0 = pipelined single APPENDs.
ceiling_one() {
    local multi=$1 n=$2 duser dpass out tool got secs bytes verified
    duser=$(dst_user "$n"); dpass=$(dst_pass "$n")
    out="$DIR/ceiling-$multi.json"
    if [ "$multi" = 0 ]; then tool="ceiling: single APPENDs"; else tool="ceiling: MULTIAPPEND $multi"; fi
    log "$tool -> destination $duser"
    BENCH_PASS="$dpass" python3 "$LOADER" load --port "$DST_DIRECT" --ca "$DST_CA" --user "$duser" \
        --messages "$MESSAGES" --multiappend "$multi" >"$out"
    secs=$(json "$out" seconds); bytes=$(json "$out" bytes)
    BENCH_PASS="$dpass" python3 "$LOADER" count --port "$DST_DIRECT" --ca "$DST_CA" --user "$duser" >"$out.count"
    got=$(json "$out.count" messages)
    if [ "$got" = "$MESSAGES" ]; then verified="yes"; else verified="NO ($got of $MESSAGES)"; FAILED=1; fi
    log "$tool: ${secs} s"
    RATE[$tool]=$(rate "$got" "$secs")
    RESULTS+=("$(row "$tool" "0 ms" "$got" "$bytes" "$secs" "" 0 "$verified")")
    rm -rf "$DIR/destination/home/$duser/Maildir" 2>/dev/null || true
}

# batch_run WORKERS RTT_LABEL SRC_PORT DST_PORT: source users 2..21 into destination users
# FIRST..FIRST+19 in one `mailhaul run`.
batch_run() {
    local workers=$1 rtt=$2 sport=$3 dport=$4 run i start end status secs got total=0 verified="yes"
    run="$DIR/batch-$workers-${rtt// /}"
    mkdir -p "$run"
    {
        echo "source_host,source_port,source_security,source_user,source_password,destination_host,destination_port,destination_security,destination_user,destination_password"
        for i in $(seq 0 19); do
            echo "127.0.0.1,$sport,tls,$(src_user $(( i + 2 ))),$(src_pass $(( i + 2 ))),127.0.0.1,$dport,tls,$(dst_user $(( BATCH_FIRST + i ))),$(dst_pass $(( BATCH_FIRST + i )))"
        done
    } >"$run/batch.csv"
    chmod 600 "$run/batch.csv"
    { echo "workers = $workers"; cat "$DIR/mailhaul.toml"; echo; echo "[copy]"; printf '%s\n' "${COPY_LINES[@]+"${COPY_LINES[@]}"}"; } >"$run/mailhaul.toml"
    log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    log "mailhaul, 20 mailboxes, workers=$workers, RTT $rtt"
    run_mailhaul "$run"
    status=$RUN_STATUS; start=$RUN_START; end=$RUN_END
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    for i in $(seq 0 19); do
        local duser dpass
        duser=$(dst_user $(( BATCH_FIRST + i ))); dpass=$(dst_pass $(( BATCH_FIRST + i )))
        BENCH_PASS="$dpass" python3 "$LOADER" count --port "$DST_DIRECT" --ca "$DST_CA" --user "$duser" >"$run/count-$i.json"
        got=$(json "$run/count-$i.json" messages)
        total=$(( total + got ))
        [ "$got" = "${BATCH_SOURCE[$i]}" ] || verified="NO (mailbox $(( i + 1 )): $got of ${BATCH_SOURCE[$i]})"
        rm -rf "$DIR/destination/home/$duser/Maildir" 2>/dev/null || true
    done
    [ "$status" = 0 ] || verified="NO (exit $status)"
    [ "$verified" = yes ] || { FAILED=1; log "batch run not verified: $verified"; tail -n 5 "$run/stderr.log" >&2; }
    log "20 mailboxes, workers=$workers, RTT $rtt: ${secs} s, $total messages"
    RATE["batch$workers@$rtt"]=$(rate "$total" "$secs")
    RESULTS+=("$(row "mailhaul, 20 mailboxes, workers=$workers" "$rtt" "$total" "$BATCH_BYTES" "$secs" \
        "$(sed -nE 's/^\s*Maximum resident set size \(kbytes\): ([0-9]+)/\1/p' "$run/time.txt")" 0 "$verified")")
}

m=$(( 4 * ROUNDS ))
run_one mailhaul-compress "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY" $(( m + 1 ))
run_one mailhaul-nocompress "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY" $(( m + 2 ))
run_one dsync "0 ms" "$SRC_DIRECT" "$DST_DIRECT" $(( m + 3 ))
run_one dsync "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_DIRECT" $(( m + 4 ))
ceiling_one 0 $(( m + 5 ))
ceiling_one 200 $(( m + 6 ))

# The batch scenario: 20 more source mailboxes (users 2..21), each its own seeded corpus.
BATCH_MESSAGES=${BATCH_MESSAGES:-$(( MESSAGES / 20 > 50 ? MESSAGES / 20 : 50 ))}
BATCH_FIRST=$(( m + 7 ))
BATCH_SOURCE=()
BATCH_BYTES=0
log "loading 20 source mailboxes of $BATCH_MESSAGES messages for the workers scenario"
for i in $(seq 0 19); do
    BENCH_PASS="$(src_pass $(( i + 2 )))" python3 "$LOADER" load --port "$SRC_DIRECT" --ca "$SRC_CA" \
        --user "$(src_user $(( i + 2 )))" --messages "$BATCH_MESSAGES" --seed $(( 100 + i )) >/dev/null
    BENCH_PASS="$(src_pass $(( i + 2 )))" python3 "$LOADER" count --port "$SRC_DIRECT" --ca "$SRC_CA" \
        --user "$(src_user $(( i + 2 )))" >"$DIR/batch-source-$i.json"
    BATCH_SOURCE+=("$(json "$DIR/batch-source-$i.json" messages)")
    BATCH_BYTES=$(( BATCH_BYTES + $(json "$DIR/batch-source-$i.json" bytes) ))
done
batch_run 4 "0 ms" "$SRC_DIRECT" "$DST_DIRECT"
batch_run 1 "0 ms" "$SRC_DIRECT" "$DST_DIRECT"
batch_run 4 "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY"
batch_run 1 "${LATENCY_MS} ms" "$SRC_PROXY" "$DST_PROXY"

# Ratios from the first round's rows (messages per second: the ceiling loads the corpus
# without the testenv's 6 sample messages).
mh0=$(rate "$SRC_MESSAGES" "${SECS[mailhaul@0 ms]}")
mhl=$(rate "$SRC_MESSAGES" "${SECS[mailhaul@${LATENCY_MS} ms]}")
ds0=$(rate "$SRC_MESSAGES" "${SECS[dsync@0 ms]}")
dsl=$(rate "$SRC_MESSAGES" "${SECS[dsync@${LATENCY_MS} ms]}")
EXTRA_NOTES+=(
    "- mailhaul on loopback / MULTIAPPEND ceiling (messages per second): **$(ratio "$mh0" "${RATE[ceiling: MULTIAPPEND 200]}")×**; / single-APPEND ceiling: $(ratio "$mh0" "${RATE[ceiling: single APPENDs]}")×"
    "- mailhaul / dsync: $(ratio "$mh0" "$ds0")× on loopback, $(ratio "$mhl" "$dsl")× at ${LATENCY_MS} ms RTT"
    "- COMPRESS=DEFLATE at ${LATENCY_MS} ms RTT: ${SECS[mailhaul-compress@${LATENCY_MS} ms]} s on, ${SECS[mailhaul-nocompress@${LATENCY_MS} ms]} s off (wire MB in the table; $([ "$BANDWIDTH_MBIT" = 0 ] && echo "the delay proxy adds latency, not a bandwidth limit" || echo "links of $BANDWIDTH_MBIT Mbit/s each way"))"
    "- 20 mailboxes of $BATCH_MESSAGES messages, workers=4 / workers=1 (messages per minute): $(ratio "${RATE[batch4@0 ms]}" "${RATE[batch1@0 ms]}")× on loopback, $(ratio "${RATE[batch4@${LATENCY_MS} ms]}" "${RATE[batch1@${LATENCY_MS} ms]}")× at ${LATENCY_MS} ms RTT"
)

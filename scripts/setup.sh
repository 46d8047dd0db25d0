#!/usr/bin/env bash
# Installs what mailhaul's demo and tests need on a fresh Debian machine, skipping what is
# already there. Usage: scripts/setup.sh [--imap-only]
#   --imap-only   just Dovecot, openssl and mbsync: enough for scripts/demo.sh and bench/
# Otherwise also Cyrus and Courier (unpacked privately, see below), chromium (report.html in a headless browser), moto[server] (AWS APIs for
# the serverless tests), Node with npm's
# oauth2-mock-server 8 (the OAuth2 tests' token server) and, in a private venv, cfn-lint +
# aws-sam-cli (infra/lint.sh) and cargo-lambda (brings zig), with Rust's aarch64 target, for
# infra/build.sh.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
if [ "${1:-}" != "--imap-only" ]; then
    command -v file >/dev/null 2>&1 || missing+=(file)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    # The report.html test opens the page in a real headless browser.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    # The package's postinst would start a system-wide Dovecot on ports 143/993; the tests
    # and the demo start their own instances, so forbid service starts during the install.
    policy=/usr/sbin/policy-rc.d
    created_policy=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod +x "$policy"
        created_policy=yes
    fi
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
    [ "$created_policy" = no ] || $SUDO rm -f "$policy"
fi

# The demo and the benchmark need nothing more.
[ "${1:-}" != "--imap-only" ] || exit 0

# Cyrus IMAP 3.6 and Courier-IMAP 5.0 for the interoperability tests. Their Debian packages
# declare `Conflicts: imap-server` (installing either removes dovecot-imapd), so they are
# fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a private directory
# that the test harness runs them from; only their libraries are installed system-wide.
SERVERS="${MAILHAUL_SERVERS_DIR:-$HOME/.cache/mailhaul/servers}"
server_libs=(libclamav12 libical3 libicu72 libjansson4 libpcre3 libxapian30 libzephyr4 libsasl2-2
    libsasl2-modules libsasl2-modules-db sasl2-bin libwrap0 libgamin0 libgdbm6 libidn12 libltdl7
    libgnutls30 util-linux)
missing_libs=()
for pkg in "${server_libs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_libs+=("$pkg")
done
if [ "${#missing_libs[@]}" -gt 0 ]; then
    echo "setup: installing the Cyrus/Courier libraries ${missing_libs[*]}" >&2
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${missing_libs[@]}"
fi
unpack_server() {
    local name="$1" marker="$2"
    shift 2
    [ ! -x "$SERVERS/$name/$marker" ] || return 0
    echo "setup: unpacking $* into $SERVERS/$name" >&2
    local debs
    debs="$(mktemp -d)"
    chmod 777 "$debs" # apt's download user (_apt) writes there
    # A machine whose package lists are old or missing gets them refreshed once.
    (cd "$debs" && apt-get download "$@") || { $SUDO apt-get update && (cd "$debs" && apt-get download "$@"); }
    rm -rf "$SERVERS/$name.tmp"
    mkdir -p "$SERVERS/$name.tmp"
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$SERVERS/$name.tmp"; done
    rm -rf "$debs" "$SERVERS/$name"
    mv "$SERVERS/$name.tmp" "$SERVERS/$name"
}
unpack_server cyrus usr/lib/cyrus/bin/master cyrus-imapd cyrus-common
unpack_server courier usr/sbin/couriertcpd courier-imap courier-base courier-authlib \
    courier-authlib-userdb libcourier-unicode4


# moto 5.2.6 or later: 5.2.1 answers CompleteMultipartUpload with a root element the Rust SDK
# refuses (CompleteMultipartUploadResponse, where S3 says CompleteMultipartUploadResult).
MOTO_AT_LEAST=5.2.6
PIP="$(command -v pip || command -v pip3)"
moto_version="$("$PIP" show moto 2>/dev/null | awk '/^Version:/ {print $2}')"
if ! command -v moto_server >/dev/null 2>&1 \
    || [ "$(printf '%s\n%s\n' "$MOTO_AT_LEAST" "${moto_version:-0}" | sort -V | head -1)" != "$MOTO_AT_LEAST" ]; then
    echo "setup: installing moto[server]>=$MOTO_AT_LEAST (found: ${moto_version:-none})" >&2
    # Debian marks the system Python as externally managed; this is a throwaway test machine.
    "$PIP" install --quiet "moto[server]>=$MOTO_AT_LEAST" 2>/dev/null \
        || "$PIP" install --quiet --break-system-packages "moto[server]>=$MOTO_AT_LEAST"
fi

# oauth2-mock-server 8.x (9.x needs Node >= 22.12; Debian 12 has 20), where the tests look.
OAUTH2_MOCK="${MAILHAUL_OAUTH2_MOCK_DIR:-$HOME/.cache/mailhaul/oauth2-mock}"
if [ ! -f "$OAUTH2_MOCK/node_modules/oauth2-mock-server/package.json" ]; then
    echo "setup: installing oauth2-mock-server into $OAUTH2_MOCK" >&2
    mkdir -p "$OAUTH2_MOCK"
    npm install --no-audit --no-fund --prefix "$OAUTH2_MOCK" "oauth2-mock-server@8" >/dev/null
fi

# cfn-lint, sam and cargo-lambda in their own venv: aws-sam-cli pins versions that fight with
# awscli. The venv keeps its old name (lint-venv) so existing machines reuse it.
LINT_VENV="${MAILHAUL_LINT_VENV:-$HOME/.cache/mailhaul/lint-venv}"
if [ ! -x "$LINT_VENV/bin/sam" ] || [ ! -x "$LINT_VENV/bin/cfn-lint" ] || [ ! -x "$LINT_VENV/bin/cargo-lambda" ]; then
    echo "setup: installing cfn-lint, aws-sam-cli and cargo-lambda into $LINT_VENV" >&2
    python3 -m venv "$LINT_VENV"
    "$LINT_VENV/bin/pip" install --quiet cfn-lint aws-sam-cli cargo-lambda
fi

# The Lambda functions run on arm64 (Graviton): cargo-lambda cross-compiles with zig, but
# needs Rust's standard library for that target.
if ! command -v rustup >/dev/null 2>&1; then
    echo "setup: rustup not found: install Rust with rustup (https://rustup.rs); the Lambda build needs its aarch64-unknown-linux-gnu target" >&2
    exit 1
elif ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    echo "setup: rustup target add aarch64-unknown-linux-gnu" >&2
    rustup target add aarch64-unknown-linux-gnu
fi

#!/usr/bin/env bash
# Installs what mailhaul's demo and tests need on a fresh Debian machine, skipping what is
# already there. Usage: scripts/setup.sh [--imap-only]
#   --imap-only   just the IMAP side (Dovecot, openssl, mbsync): enough for scripts/demo.sh
# Otherwise also moto[server] (AWS APIs for the serverless tests) and, in a private venv,
# cfn-lint + aws-sam-cli for infra/lint.sh.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
if [ "${1:-}" != "--imap-only" ]; then
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
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

[ "${1:-}" != "--imap-only" ] || exit 0

if ! command -v moto_server >/dev/null 2>&1; then
    echo "setup: installing moto[server]" >&2
    PIP="$(command -v pip || command -v pip3)"
    # Debian marks the system Python as externally managed; this is a throwaway test machine.
    "$PIP" install --quiet "moto[server]" 2>/dev/null \
        || "$PIP" install --quiet --break-system-packages "moto[server]"
fi

# cfn-lint and sam in their own venv: aws-sam-cli pins versions that fight with awscli.
LINT_VENV="${MAILHAUL_LINT_VENV:-$HOME/.cache/mailhaul/lint-venv}"
if [ ! -x "$LINT_VENV/bin/sam" ] || [ ! -x "$LINT_VENV/bin/cfn-lint" ]; then
    echo "setup: installing cfn-lint and aws-sam-cli into $LINT_VENV" >&2
    python3 -m venv "$LINT_VENV"
    "$LINT_VENV/bin/pip" install --quiet cfn-lint aws-sam-cli
fi

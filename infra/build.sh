#!/usr/bin/env bash
# Builds the stack the way `sam deploy` takes it: `sam build --beta-features` (BuildMethod
# rust-cargolambda: one `cargo lambda build --release --arm64 --bin NAME` per function, in this
# checkout's target/), then checks that .aws-sam/build holds the template and every function of
# infra/template.yaml as an arm64 ELF `bootstrap`. A template or workspace change that breaks
# deployment fails here. Needs sam, cargo-lambda and the aarch64-unknown-linux-gnu Rust target
# (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
export SAM_CLI_TELEMETRY=0

for tool in sam cargo-lambda; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "infra/build.sh: $tool not found: run scripts/setup.sh and put its venv's bin/ on PATH" >&2
        exit 2
    fi
done

# Logical ids of the template's functions: a resource line followed by its Serverless type.
mapfile -t functions < <(awk '
    /^  [A-Za-z0-9]+:$/ { name = substr($1, 1, length($1) - 1); next }
    /^    Type: AWS::Serverless::Function$/ && name != "" { print name }
    { name = "" }' infra/template.yaml)
if [ "${#functions[@]}" -eq 0 ]; then
    echo "infra/build.sh: no AWS::Serverless::Function found in infra/template.yaml" >&2
    exit 1
fi

started=$SECONDS
sam build --beta-features # template and options from samconfig.toml
echo "infra/build.sh: sam build took $((SECONDS - started)) s" >&2

built=.aws-sam/build
if [ ! -f "$built/template.yaml" ]; then
    echo "infra/build.sh: sam build wrote no $built/template.yaml" >&2
    exit 1
fi
for function in "${functions[@]}"; do
    bootstrap="$built/$function/bootstrap"
    if [ ! -x "$bootstrap" ]; then
        echo "infra/build.sh: $function: no executable $bootstrap" >&2
        exit 1
    fi
    kind="$(file -b "$bootstrap")"
    case "$kind" in
        "ELF 64-bit"*"ARM aarch64"*) ;;
        *)
            echo "infra/build.sh: $function: $bootstrap is not an arm64 executable: $kind" >&2
            exit 1
            ;;
    esac
    if ! grep -qx "      CodeUri: $function" "$built/template.yaml"; then
        echo "infra/build.sh: $function: $built/template.yaml does not point at $function/" >&2
        exit 1
    fi
    echo "infra/build.sh: $function: $(du -h "$bootstrap" | cut -f1) $kind" >&2
done
echo "infra/build.sh: ${#functions[@]} functions built for arm64 in $built (sam deploy --guided takes it from there)"

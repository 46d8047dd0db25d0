#!/usr/bin/env bash
# Lints the SAM template offline: cfn-lint and `sam validate --lint` (pip: cfn-lint, aws-sam-cli).
set -euo pipefail
cd "$(dirname "$0")/.."
export SAM_CLI_TELEMETRY=0
cfn-lint infra/template.yaml
# sam needs a region to resolve the transform, but no credentials.
AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" sam validate --lint -t infra/template.yaml
echo "infra/template.yaml: cfn-lint and sam validate --lint passed"

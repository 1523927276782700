#!/usr/bin/env bash
# Static checks of the Terraform under infra/: formatting and checkov policy checks.
#
#   infra/check.sh                      # checkov from PATH
#   CHECKOV=/path/to/checkov infra/check.sh
#
# Needs `terraform` (any 1.5+; only `fmt` is used, no providers are downloaded) and checkov
# (tested with 3.3.30: pip install 'checkov==3.3.30'). Runs offline. Exits non-zero if either
# check fails or a tool is missing.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

CHECKOV="${CHECKOV:-checkov}"
TERRAFORM="${TERRAFORM:-terraform}"
status=0

if ! command -v "$TERRAFORM" >/dev/null 2>&1; then
    echo "check.sh: terraform not found (set TERRAFORM=/path/to/terraform)" >&2
    exit 2
fi
if ! command -v "$CHECKOV" >/dev/null 2>&1; then
    echo "check.sh: checkov not found (pip install checkov, or set CHECKOV=/path/to/checkov)" >&2
    exit 2
fi

echo "== terraform fmt -check -recursive infra"
if ! "$TERRAFORM" fmt -check -recursive -diff infra; then
    echo "check.sh: formatting differs; run: terraform fmt -recursive infra" >&2
    status=1
fi

# --skip-download: no calls to the Prisma Cloud API (offline; only guideline links are lost).
echo "== checkov -d infra --quiet --compact"
if ! "$CHECKOV" -d infra --quiet --compact --skip-download; then
    echo "check.sh: checkov reported failed checks" >&2
    status=1
fi

exit "$status"

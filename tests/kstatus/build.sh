#!/usr/bin/env bash
# Builds the kstatus CLI (main.go, on sigs.k8s.io/cli-utils pinned in go.mod), cached outside
# the checkout; prints the path of the binary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../build-go-main.sh" "$here" sigs.k8s.io/cli-utils kstatus

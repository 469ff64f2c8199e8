#!/usr/bin/env bash
# Builds fluxapply (main.go, on github.com/fluxcd/pkg/ssa pinned in go.mod), cached outside the
# checkout; prints the path of the binary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../build-go-main.sh" "$here" github.com/fluxcd/pkg/ssa fluxapply

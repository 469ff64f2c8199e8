#!/usr/bin/env bash
# System packages the tests and `make up` need beyond Rust and Go: lua5.1 (tests/tests/deploy.rs
# runs the Argo CD health check's Lua tests with it; Argo CD's gopher-lua is Lua 5.1), openssl
# (tests/tests/security.rs offers TLS 1.0/1.1 with `openssl s_client`) and curl (`make up` waits
# on /readyz with it), and a C++ compiler (`make lint` builds the fuzz targets, and libfuzzer-sys
# compiles libFuzzer; the C compiler ring needs comes with it). Idempotent: does nothing when
# everything is there. Installs with apt-get as root (CI), or via sudo. Checks first that Rust
# and Go, which it does not install, are on PATH and new enough.
set -euo pipefail

# Rust and Go are not installed here. Say which is missing or too old before anything is
# built with them, instead of failing later in a build script.
need() { # name, version printed by the tool, minimum major, minimum minor
  local major minor
  if [[ $2 =~ ([0-9]+)\.([0-9]+) ]]; then
    major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
    if (( major > $3 || (major == $3 && minor >= $4) )); then return 0; fi
  fi
  echo "hack/install-deps.sh: $1 $3.$4 or newer is needed (README, Prerequisites); found: ${2:-none (is it on PATH?)}" >&2
  exit 1
}
need Rust "$(cargo --version 2>/dev/null || true)" 1 89
# Asked where the Go tools are built, so that GOTOOLCHAIN=auto answers with the toolchain
# their go.mod selects.
need Go "$(cd "$(dirname "$0")/../tests/cluster" && go env GOVERSION 2>/dev/null || true)" 1 26

missing=()
command -v lua5.1 >/dev/null 2>&1 || missing+=(lua5.1)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "hack/install-deps.sh: please install ${missing[*]} (no apt-get on this machine)" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "hack/install-deps.sh: run as root or install ${missing[*]}" >&2
    exit 1
  }
  sudo=(sudo)
fi
echo "hack/install-deps.sh: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
# After sudo, which would drop it from the environment.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# System packages the tests and `make up` need beyond Rust and Go: lua5.1 (tests/tests/deploy.rs
# runs the Argo CD health check's Lua tests with it; Argo CD's gopher-lua is Lua 5.1), openssl
# (tests/tests/security.rs offers TLS 1.0/1.1 with `openssl s_client`) and curl (`make up` waits
# on /readyz with it), and a C++ compiler (`make lint` builds the fuzz targets, and libfuzzer-sys
# compiles libFuzzer; the C compiler ring needs comes with it). Idempotent: does nothing when everything is there. Installs with apt-get
# as root (CI), or via sudo.
set -euo pipefail

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

#!/usr/bin/env bash
# Installs what the browser test of package web needs: Chromium at
# /usr/bin/chromium (Debian's package). The main CI script calls this before
# `go test`; with CI=true the browser test fails rather than skips when
# Chromium is missing.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y chromium
fi
chromium --version 2>/dev/null | head -n1 || true

#!/usr/bin/env bash
# Install headless Chromium (Debian's `chromium` package) for the experiments tests, which
# drive the study page through the Chrome DevTools protocol.
#
# Idempotent. Exit codes: 0 ready; 77 cannot install here (not root, no apt-get, package not
# installable); anything else: a failure.
set -euo pipefail

say() { echo "setup_chromium: $*" >&2; }

for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null; then
        say "found $(command -v "$name")"
        exit 0
    fi
done
[ "$(id -u)" -eq 0 ] || { say "SKIP: not root, cannot apt-get install chromium"; exit 77; }
command -v apt-get >/dev/null || { say "SKIP: no apt-get"; exit 77; }
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >&2; then
    apt-get update >&2 || true
    apt-get install -y --no-install-recommends chromium >&2 || { say "SKIP: chromium not installable"; exit 77; }
fi
command -v chromium >/dev/null || { say "ERROR: chromium installed but not on PATH"; exit 1; }
say "installed $(command -v chromium)"

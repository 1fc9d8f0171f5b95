#!/usr/bin/env bash
# Browser tests of the admin web console: Debian's Chromium, headless,
# driven by playwright-core (pinned in tests/browser/package-lock.json;
# Playwright never downloads a browser). Starts its own `fieldsync server`
# on 127.0.0.1 and stops it. Screenshots of each page: artifacts/console/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# The same build as scripts/kotlin-test.sh (one feature set, built once).
cargo build --quiet --locked -p fieldsync-bindings -p uniffi-bindgen -p fieldsync
cd tests/browser
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
node --test --test-concurrency=1 console.test.mjs

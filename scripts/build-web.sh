#!/usr/bin/env bash
# Builds the dashboard (web/ → web/dist), which the next cargo build embeds in the
# binary. Needs Node.js 20.19+ and npm; without them it says so and the binary is built
# without the dashboard (its `/` then says how to build it).
set -euo pipefail
cd "$(dirname "$0")/../web"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "build-web: Node.js 20.19+ and npm are needed to build the dashboard; skipping it" >&2
    exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
npm run build --silent
# The budget of issue 17: at most 150 KB of JavaScript gzipped on first load.
total=0
for f in dist/assets/*.js; do
    total=$((total + $(gzip -9 -c "$f" | wc -c)))
done
echo "build-web: web/dist built; JavaScript ${total} bytes gzipped (budget 153600)"
if [ "$total" -gt 153600 ]; then
    echo "build-web: over the 150 KB budget" >&2
    exit 1
fi

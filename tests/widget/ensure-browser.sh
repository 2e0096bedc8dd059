#!/usr/bin/env bash
# Installs what the widget browser test needs, only where it is missing, so a second run is quick:
# Debian's Chromium (/usr/bin/chromium) and playwright-core from npm. playwright-core goes into a
# cache folder under target/ (never the repo root), so the sources stay free of node_modules.
#
# Prints the folder that holds node_modules/playwright-core on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
node_dir="${QUOTEGW_WIDGET_NODE_DIR:-$root/target/widget-node}"
# Pinned so that a fresh machine gets what this test was written against; bump on purpose.
playwright_version="1.64.1"

if [ ! -x /usr/bin/chromium ]; then
  echo "ensure-browser: installing Debian chromium" >&2
  "$root/tests/support/apt-install.sh" /usr/bin/chromium chromium
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "ensure-browser: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi

mkdir -p "$node_dir"
installed=""
if [ -f "$node_dir/node_modules/playwright-core/package.json" ]; then
  installed="$(node -p "require('$node_dir/node_modules/playwright-core/package.json').version")"
fi
if [ "$installed" != "$playwright_version" ]; then
  echo "ensure-browser: installing playwright-core@$playwright_version into $node_dir" >&2
  if [ ! -f "$node_dir/package.json" ]; then
    printf '{\n  "name": "quotegw-widget-test-deps",\n  "private": true,\n  "description": "cache for tests/widget: installed by tests/widget/ensure-browser.sh"\n}\n' \
      > "$node_dir/package.json"
  fi
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing by itself, but say it anyway;
  # the test drives Debian's /usr/bin/chromium.
  (cd "$node_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund \
     --loglevel=error "playwright-core@$playwright_version" >&2)
fi
echo "$node_dir"

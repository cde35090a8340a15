#!/usr/bin/env bash
# Installs the viewer peers of the tests (docs/viewers.md) into ignored folders of viewers/:
# - node_modules/: dcmjs, OHIF's DICOM library, at the version OHIF bundles (npm ci, package-lock.json);
# - ohif/dist/: OHIF's prebuilt viewer, the dist/ folder of the npm package @ohif/app at the pinned version,
#   fetched with `npm pack` and checked against the registry's published integrity. Its dependencies are
#   already bundled in dist/ and are not installed (they cannot be: @ohif/app 3.13.2 names
#   @ohif/i18n@3.13.2, which the registry does not have).
# Idempotent: a second run with the same pins does nothing.
set -euo pipefail
cd "$(dirname "$0")"

OHIF_VERSION=3.13.2
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="

command -v npm >/dev/null || { echo "viewers/install.sh: npm is missing (scripts/setup.sh installs it)" >&2; exit 1; }

if ! cmp -s package-lock.json node_modules/.package-lock-installed 2>/dev/null; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
  cp package-lock.json node_modules/.package-lock-installed
fi

if [[ "$(cat ohif/VERSION 2>/dev/null)" != "$OHIF_VERSION" ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack "@ohif/app@$OHIF_VERSION" --silent --loglevel=error >/dev/null)
  tarball="$work/ohif-app-$OHIF_VERSION.tgz"
  actual=$(node -e 'const c = require("crypto"), f = require("fs");
    process.stdout.write("sha512-" + c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$tarball")
  if [[ "$actual" != "$OHIF_INTEGRITY" ]]; then
    echo "viewers/install.sh: @ohif/app@$OHIF_VERSION does not match its pinned integrity" >&2
    exit 1
  fi
  rm -rf ohif
  mkdir -p ohif
  tar -xzf "$tarball" -C ohif --strip-components=1 package/dist package/LICENSE
  echo "$OHIF_VERSION" > ohif/VERSION
fi

#!/usr/bin/env bash
# Refresh the NiiVue browser bundle that ichseg's viewer pages use (src/ichseg/viz/vendor/niivue).
#
# The pages never fetch anything at run time: predict copies this bundle into PRED/viewer/. This
# script is how the bundle got there, and how to move to another release: set NIIVUE_VERSION and
# NIIVUE_SHA256 (the sha256 of the npm tarball, printed by a first run with NIIVUE_SHA256=any),
# run it from the repository root, open a viewer page and run tests/test_viewer.py.
#
# Needs npm and the npm registry. Writes into the vendor folder:
#   niivue.umd.js            dist/niivue.umd.js of @niivue/niivue (a classic script: window.niivue)
#   VERSION                  the release, the tarball's sha256 and the bundle's sha256
#   THIRD_PARTY_LICENSES.txt the licences of NiiVue's runtime dependencies, which the bundle holds
# LICENSE (NiiVue's BSD-2-Clause, from the niivue repository: the npm tarball does not carry it)
# is kept as it is.
set -euo pipefail

NIIVUE_VERSION="${NIIVUE_VERSION:-0.69.0}"
NIIVUE_SHA256="${NIIVUE_SHA256:-6e9a6a471b428eb3b258a0086beca9187d95e43a781a39e8a519c6da246af485}"

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/src/ichseg/viz/vendor/niivue"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
tarball="$(npm pack --silent "@niivue/niivue@$NIIVUE_VERSION")"
got="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [ "$got" != "$NIIVUE_SHA256" ]; then
    echo "npm tarball $tarball has sha256 $got, expected $NIIVUE_SHA256" >&2
    exit 1
fi
tar -xzf "$tarball" package/dist/niivue.umd.js package/package.json

# The dependencies' licence files, as npm installs them for this release (scripts not run).
npm install --silent --ignore-scripts --no-audit --no-fund --omit=dev --omit=optional \
    --omit=peer --prefix "$work/deps" "@niivue/niivue@$NIIVUE_VERSION"
licences="$work/THIRD_PARTY_LICENSES.txt"
echo "Licences of the packages bundled into niivue.umd.js (NiiVue $NIIVUE_VERSION's runtime dependencies)." > "$licences"
for manifest in $(find "$work/deps/node_modules" -mindepth 2 -maxdepth 3 -name package.json | sort); do
    package="$(dirname "$manifest")"
    name="$(node -p "require('$manifest').name")"
    [ "$name" = "@niivue/niivue" ] && continue
    text="$(find "$package" -maxdepth 1 -iname 'licen[cs]e*' | head -n 1)"
    [ -n "$text" ] || continue
    {
        printf '\n==== %s@%s (%s)\n\n' "$name" "$(node -p "require('$manifest').version")" \
            "$(node -p "require('$manifest').license")"
        cat "$text"
    } >> "$licences"
done

mkdir -p "$vendor"
cp package/dist/niivue.umd.js "$vendor/niivue.umd.js"
cp "$licences" "$vendor/THIRD_PARTY_LICENSES.txt"
printf '@niivue/niivue %s\nnpm tarball sha256 %s\nniivue.umd.js sha256 %s\n' "$NIIVUE_VERSION" \
    "$got" "$(sha256sum package/dist/niivue.umd.js | cut -d' ' -f1)" > "$vendor/VERSION"
echo "wrote $vendor (NiiVue $NIIVUE_VERSION)"

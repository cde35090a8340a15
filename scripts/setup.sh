#!/usr/bin/env bash
# Installs what the node needs on a Debian machine: dcmtk and dicom3tools (dciodvfy validates every
# output before it is sent), a virtual environment in .venv, and the package with its pinned dependencies.
# Usage: scripts/setup.sh [--with-postgres]   (root, or sudo, for apt-get; --with-postgres also installs the
# test peers: a PostgreSQL server, Orthanc as a real PACS with its DICOMweb plugin, headless Chromium for the
# status page and the viewer tests, pixelmed's TID 1500 validator, and the viewers readers use (viewers/install.sh:
# OHIF's prebuilt viewer and dcmjs from the npm registry, with Node.js and npm from Debian when missing))
# Only what is missing is installed: apt-get runs only for a Debian package that is not there, and pip only when
# pyproject.toml or this script changed since the last set-up (their hash is kept in .venv/.immunode-setup) or,
# for the package alone without its dependencies, when a source file is newer than that stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(dcmtk dicom3tools)
with_peers=false
[[ "${1:-}" == "--with-postgres" ]] && with_peers=true
if $with_peers; then packages+=(postgresql orthanc orthanc-dicomweb chromium pixelmed-apps); fi
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
# Node.js and npm: Debian's unless the machine has them already (a NodeSource nodejs includes npm).
if $with_peers && ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=.venv/.immunode-setup
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
sources=(common dicom_node immunode models pipelines research storage)
if [[ -x .venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$wanted" ]]; then
  # Dependencies as set up: reinstall the package itself only when its files changed (a pull, an edit).
  if [[ -n "$(find "${sources[@]}" -type f -newer "$stamp" -print -quit)" ]]; then
    .venv/bin/python -m pip install -q --no-deps .
    touch "$stamp"
  fi
else
  PYTHON=${PYTHON:-python3}
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # torch first and exactly: this version resolves to the CPU build (no CUDA download).
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # A regular (not editable) install: the package data installs without setuptools notes; tests and the
  # worker processes they start import the working tree, which comes first on their path.
  .venv/bin/python -m pip install -q ".[test]"
  echo "$wanted" > "$stamp"
fi

# The viewer peers of the tests (idempotent: nothing to do when the pinned versions are there).
if $with_peers; then viewers/install.sh; fi

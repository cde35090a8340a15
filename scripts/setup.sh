#!/usr/bin/env bash
# Installs what the node needs on a Debian machine: dcmtk and dicom3tools (dciodvfy validates every
# output before it is sent), a virtual environment in .venv, and the package with its pinned dependencies.
# Usage: scripts/setup.sh [--with-postgres]   (root, or sudo, for apt-get; --with-postgres also installs the
# test peers: a PostgreSQL server, Orthanc as a real PACS with its DICOMweb plugin, headless Chromium for the
# status page and the viewer tests, pixelmed's TID 1500 validator, and the viewers readers use (viewers/install.sh:
# OHIF's prebuilt viewer and dcmjs from the npm registry, with Node.js and npm from Debian when missing))
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

PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch first and exactly: this version resolves to the CPU build (no CUDA download).
.venv/bin/python -m pip install -q "torch==2.13.0"
# A regular (not editable) install: the package data installs without setuptools notes; tests and the
# worker processes they start import the working tree, which comes first on their path.
.venv/bin/python -m pip install -q ".[test]"

if $with_peers; then viewers/install.sh; fi

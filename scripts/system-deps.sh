#!/usr/bin/env bash
# Install the Debian packages `make demo` / `make test` need when they are missing (idempotent: present -> nothing).
#   scripts/system-deps.sh dataset-fashion-mnist [python3-h5py hdf5-tools]
# dataset-fashion-mnist: the real data (demo, tests); python3-h5py (the system python's h5py, linked to Debian's
# HDF5 1.10) and hdf5-tools (h5dump, h5ls): the tests read feddf caches with stock HDF5 (tests/test_portable.py).
# On Debian as root they are apt-get installed (after `apt-get update` when the package lists lack them);
# anywhere else this prints one line saying what to run and fails.
set -euo pipefail

present() {
  case "$1" in
    dataset-fashion-mnist) [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ;;
    python3-h5py) [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import h5py' 2>/dev/null ;;
    hdf5-tools) command -v h5dump >/dev/null 2>&1 && command -v h5ls >/dev/null 2>&1 ;;
    *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' ;;
  esac
}

missing=()
for p in "$@"; do
  present "$p" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  echo "installing missing Debian packages: ${missing[*]}"
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
  for p in "${missing[@]}"; do
    present "$p" || { echo "error: apt-get installed $p but it is still not usable" >&2; exit 1; }
  done
  exit 0
fi
echo "error: missing Debian packages ${missing[*]}: run \`sudo apt-get install -y ${missing[*]}\` (or provide them) and retry" >&2
exit 1

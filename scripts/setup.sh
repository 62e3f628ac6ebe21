#!/usr/bin/env bash
# Set up segnode on a Debian machine with Python 3.11, as root: system packages, then a virtualenv in .venv.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus the real peers the tests talk to (DCMTK, dcm2niix, dicom3tools, Orthanc, openssl, systemd-analyze, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_packages=()
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_packages+=(python3-venv python3-pip)
if [ "$want_test" = 1 ]; then
  command -v storescu >/dev/null || apt_packages+=(dcmtk)
  command -v dcm2niix >/dev/null || apt_packages+=(dcm2niix)
  command -v dciodvfy >/dev/null || apt_packages+=(dicom3tools)
  command -v Orthanc >/dev/null || apt_packages+=(orthanc)
  command -v openssl >/dev/null || apt_packages+=(openssl)
  command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
  # The status page's browser test: Debian's headless Chromium and the chromedriver of the same build.
  command -v chromium >/dev/null || apt_packages+=(chromium)
  command -v chromedriver >/dev/null || apt_packages+=(chromium-driver)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${apt_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  # Orthanc's package starts a system service on port 4242; the tests run their own instances.
  if [[ " ${apt_packages[*]} " == *" orthanc "* ]]; then
    (systemctl disable --now orthanc 2>/dev/null || service orthanc stop 2>/dev/null) || true
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi

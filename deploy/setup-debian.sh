#!/usr/bin/env bash
# Everything ComputePods needs on a fresh Debian 12 machine: system tools, then the package itself.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  coreutils gcc libc6-dev make bubblewrap iproute2 procps
  texlive-latex-base texlive-latex-recommended texlive-bibtex-extra
  biber latexmk poppler-utils
  chromium chromium-driver
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
pip_install() {  # pip's messages minus the root warning; fails when pip fails
  local out status=0
  out=$("$PYTHON" -m pip install -q --disable-pip-version-check "$@" 2>&1) || status=$?
  printf '%s\n' "$out" | grep -v -e "Running pip as the 'root' user" -e '^$' || true
  return "$status"
}
pip_install -e '.[test]'
# An editable install compiles nothing, and where PYTHONDONTWRITEBYTECODE is set nothing else
# would: every command would compile our modules again (~20 ms of each `majordomo build`).
"$PYTHON" -m compileall -q -j 0 majordomo chefs artefacts protocol >/dev/null
(cd / && "$PYTHON" -c "import majordomo, chefs, artefacts, protocol")  # from the install, not the checkout
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "setup: ready ($("$PYTHON" --version), $(nats-server --version 2>/dev/null || echo 'nats-server from wheel'))"

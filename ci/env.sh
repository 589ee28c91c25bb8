# Sourced by the ci/ scripts: makes sure the system packages and the virtualenv exist.
# Works on a fresh Debian 12 with Python 3.11 and gcc; installs what is missing, nothing else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FTSERVER_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

# install the Debian packages given that are missing (apt-get, through sudo when not root)
apt_install() {
    local need=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    ((${#need[@]})) || return 0
    echo "ci: installing Debian packages: ${need[*]}"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
}

# to build and run ftserver
apt_install python3-dev python3-venv libssl-dev

if [ ! -x "$VENV/bin/python" ]; then
    echo "ci: creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
export PATH="$VENV/bin:$PATH"

# install the package (builds the Cython extension) with the given extras, e.g. "test"
install_project() {
    local extras="${1:-}"
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    echo "ci: pip install -e '$spec'"
    python -m pip install -q -e "$spec"
}

# Sourced by dev.sh and test.sh: find Python >= 3.11, create .venv, install Switchboard into it.
# Re-installs only when pyproject.toml changed since the last install.

pick_python() {
  for candidate in "${PYTHON:-}" python3.12 python3.11 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Switchboard needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)." >&2
  return 1
}

bootstrap_venv() {
  local extras="$1" stamp=".venv/.installed-$1"
  if [ ! -x .venv/bin/python ]; then
    local py; py=$(pick_python)
    echo "==> creating .venv with $($py --version)"
    "$py" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing Switchboard and its dependencies into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${extras}"
    touch "$stamp"
  fi
}

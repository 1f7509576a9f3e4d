#!/usr/bin/env bash
# The test suite on the lowest supported versions: a fresh venv on Python 3.12 (Chatter's)
# with '.[test]' installed under constraints/lowest.txt. Used by `make test-lowest`
# (part of `make test`). Extra pytest arguments are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local candidate
  for candidate in "${PYTHON_LOWEST:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "test-lowest: no Python 3.12 found (set PYTHON_LOWEST)" >&2
  exit 1
}

python=$(find_python)
venv=${LOWEST_VENV:-.venv-lowest}
stamp="$venv/.installed-$(cat pyproject.toml constraints/lowest.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  log="$venv/pip.log"
  { "$venv/bin/python" -m pip install --quiet --upgrade pip &&
    "$venv/bin/python" -m pip install --quiet -c constraints/lowest.txt '.[test]'; } >"$log" 2>&1 ||
    { cat "$log" >&2; exit 1; }
  touch "$stamp"
fi

# Every pin of the constraints file is what is installed (a pin pip could not honour fails).
"$venv/bin/python" - <<'PY'
import re
from importlib.metadata import version

from packaging.utils import canonicalize_name

wrong = []
for line in open("constraints/lowest.txt"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, pinned = re.split(r"==", line)
    installed = version(canonicalize_name(name))
    if installed != pinned:
        wrong.append(f"{name} {installed} (pinned {pinned})")
assert not wrong, "not the lowest versions: " + ", ".join(wrong)
PY

echo "test-lowest: $("$venv/bin/python" --version), $(grep -c '==' constraints/lowest.txt) pinned lowest versions"
"$venv/bin/pytest" -m "not slow" -p no:cacheprovider "$@"

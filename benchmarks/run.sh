#!/usr/bin/env bash
# paceline's benchmark suite in one command:
#
#     benchmarks/run.sh [--reps N] [--quick] [--only W1,W4:paceline]
#
# Builds its own venv at benchmarks/.venv (paceline from this checkout, editable, plus the
# pinned peers of requirements.txt), then runs every workload for every tool, each
# measurement in a fresh process, and prints one table. Set PYTHON to choose the interpreter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
# Reinstall only when the requirements or paceline's packaging changed.
stamp="$venv/.installed"
want="$(cat "$here/requirements.txt" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e "$repo" -r "$here/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
    echo "$want" > "$stamp"
fi

exec "$venv/bin/python" "$here/run.py" "$@"

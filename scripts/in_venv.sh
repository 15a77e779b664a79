#!/usr/bin/env bash
# Run a command inside the project's virtual environment (.venv at the repo root), creating it and
# installing the project with its test, demo, plots, benchmark, transformers, posthoc and app extras first when needed, at the versions
# of constraints.txt. Re-installs only when pyproject.toml, constraints.txt or the app installer changed since the last install.
#   bash scripts/in_venv.sh timm-isomax finetune
#   bash scripts/in_venv.sh python -m pytest -q -n 2 --dist loadfile
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
stamp="$venv/.timm_isomax_installed"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[in_venv] creating $venv" >&2
    "$python" -m venv "$venv"
fi
want="$(cat "$repo/pyproject.toml" "$repo/constraints.txt" "$repo/scripts/install_app_extra.py" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[in_venv] installing timm-isomax and its dependencies (versions: constraints.txt) into $venv (first run: a few minutes)" >&2
    # The plain index's torch is a CUDA build; it runs on CPU too (see README, 'Installing').
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$repo/constraints.txt" -e "$repo[test,demo,plots,benchmark,transformers,posthoc]" >&2
    "$venv/bin/python" "$repo/scripts/install_app_extra.py" >&2  # the app extra: gradio (why apart: that script)
    echo "$want" > "$stamp"
fi
cd "$repo"
export PATH="$venv/bin:$PATH"
exec "$@"

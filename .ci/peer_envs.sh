#!/usr/bin/env bash
# Virtual environments for the peers and bridges that cannot share .venv (they need numpy 2,
# or a vendor's packages). Idempotent: each block builds its env only when the env cannot
# import what it needs; one block per env. Run by the README's test command (and so by CI).
set -euo pipefail
cd "$(dirname "$0")/.."

# .venv-nion: the Nion Swift instrumentation bridge on Nion's simulator
# (instruments/bridges/nion.py; tests/test_nion_bridge.py)
if ! .venv-nion/bin/python -c "import nion.instrumentation.scan_base, nion.usim_device" 2>/dev/null; then
  python3 -m venv .venv-nion
  .venv-nion/bin/pip install -q "nionswift-instrumentation>=23.6,<24" "nionswift-usim>=5.4,<6"
fi

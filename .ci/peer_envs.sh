#!/usr/bin/env bash
# Virtual environments for the peers (other projects' servers that tests talk to, see
# ../shared/peers/README.md). Idempotent: an environment whose stamp matches is left alone.
# One block per peer environment; each skips itself when its sources are absent (a clone
# without ../shared beside it), and the tests that need it skip with the reason.
#
#   MICAGENT_PEERS       folder of the peers' sources   (default: ../shared/peers from the repo root)
#   MICAGENT_PEERS_VENV  DTMicroscope's environment     (default: .venv-peers in the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${MICAGENT_PEERS:-../shared/peers}"

# Create venv $1 for the sources folder $2 with the packages "${@:3}"; pip-install the sources
# from a temporary copy (shared/ is read-only in CI, and setup.py builds in place).
peer_env() {
    local venv="$1" sources="$2"; shift 2
    local stamp; stamp="$( (printf '%s\n' "$@"; cd "$sources" && find . -type f -name '*.py' \
        -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && "$(cat "$venv/.micagent-stamp" 2>/dev/null)" == "$stamp" ]]; then
        echo "peer env $venv: up to date"
        return
    fi
    local started=$SECONDS tmp
    tmp="$(mktemp -d)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$@"
    cp -r "$sources" "$tmp/src"
    "$venv/bin/pip" install -q --no-deps "$tmp/src"
    rm -rf "$tmp"
    echo "$stamp" > "$venv/.micagent-stamp"
    echo "peer env $venv: built in $((SECONDS - started)) s"
}

# --- DTMicroscope (its own STEM server; numpy 2 era packages, so not in .venv) --------------
if [[ -d "$PEERS/dtmicroscope" ]]; then
    peer_env "${MICAGENT_PEERS_VENV:-.venv-peers}" "$PEERS/dtmicroscope" \
        Pyro5 sidpy SciFiReaders pyNSID "pyTEMlib==0.2026.6.0" ase scikit-image matplotlib \
        scipy "pyarrow<26"
else
    echo "peer env for DTMicroscope: skipped, no sources at $PEERS/dtmicroscope"
fi

# --- Nion Swift instrumentation bridge on Nion's simulator (numpy 2; instruments/bridges/nion.py,
# tests/test_nion_bridge.py). From PyPI, so it needs no sources beside the repository.
NION_VENV="${MICAGENT_NION_VENV:-.venv-nion}"
if "$NION_VENV/bin/python" -c "import nion.instrumentation.scan_base, nion.usim_device" 2>/dev/null; then
    echo "peer env $NION_VENV: up to date"
else
    started=$SECONDS
    python3 -m venv "$NION_VENV"
    "$NION_VENV/bin/pip" install -q "nionswift-instrumentation>=23.6,<24" "nionswift-usim>=5.4,<6"
    echo "peer env $NION_VENV: built in $((SECONDS - started)) s"
fi

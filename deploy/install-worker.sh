#!/bin/sh
# Installs the Cobble worker for the current user, from this source
# checkout, as a systemd user service, and starts it:
#   deploy/install-worker.sh --coordinator http://project.example:7710 [--user NAME] [--team TEAM] [--pref KEY=VALUE]...
# Remove it with: cobble-worker uninstall (or ~/.local/bin/cobble-worker uninstall).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-worker: cargo is needed to build the worker (https://rustup.rs)" >&2
    exit 1
fi
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml" -p cobble-worker
exec "$root/target/release/cobble-worker" install "$@"

#!/usr/bin/env bash
# The Debian package: target/debian/mdfuse_<version>-1_<arch>.deb.
# Builds mdfuse, generates its man pages and completions from the clap
# definitions (`mdfuse gen-assets`), then packages with cargo-deb (installed
# with `cargo install cargo-deb` when missing). Extra arguments go to cargo deb.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo build --release -p mdfuse
target_dir=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target_dir/release/mdfuse" gen-assets "$target_dir/release/assets"
cargo deb -p mdfuse --no-build --strip "$@"

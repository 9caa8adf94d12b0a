#!/usr/bin/env bash
# Build target/debian/condo_*.deb with cargo-deb (`cargo install cargo-deb`).
# PROFILE=dev packages the debug build (what the test suite does, to skip a release
# build); the default is release.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${PROFILE:-release}"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
cargo build --profile "$profile" --bin condo
"target/$dir/condo" man > target/condo.8
"target/$dir/condo" man --section 5 > target/condo.toml.5
cargo deb --no-build --no-strip --profile "$profile" "$@"

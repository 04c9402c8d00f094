#!/usr/bin/env bash
# The build steps of deploy/Dockerfile, as a plain script: the image build
# runs exactly this, and CI runs it too (no container engine needed).
#
#   deploy/build.sh [OUT_DIR]     (default target/deploy)
#
# Produces OUT_DIR/bin/{nio-control-plane,nioctl,nio-data-plane,nio-demo-backend}
# (release, stripped) and OUT_DIR/state/ with the runtime directories the
# images need, owned by the non-root user in the image.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/deploy}
echo "==> cargo build --release (stripped) into $out"
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --locked --release --bins -p nio-control-plane -p nio-data-plane -p nio-e2e
mkdir -p "$out/bin" "$out/state/var/lib/nio" "$out/state/var/lib/nio-ca" "$out/state/var/cache/nio"
for b in nio-control-plane nioctl nio-data-plane nio-demo-backend; do
  cp "target/release/$b" "$out/bin/$b"
done
ls -l "$out/bin"

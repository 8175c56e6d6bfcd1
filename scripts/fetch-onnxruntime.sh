#!/usr/bin/env bash
# Puts the ONNX Runtime shared library where crosstrain looks for it, taken from the PyPI
# `onnxruntime` wheel (fetched with pip, the ordinary package client). Idempotent.
#   cache: $CROSSTRAIN_CACHE/onnxruntime, default ${XDG_CACHE_HOME:-$HOME/.cache}/crosstrain/onnxruntime
set -euo pipefail
VERSION="${ONNXRUNTIME_VERSION:-1.32.0}"
CACHE_ROOT="${CROSSTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crosstrain}"
TARGET="$CACHE_ROOT/onnxruntime"
LIBRARY="$TARGET/libonnxruntime.so.$VERSION"
if [ -f "$LIBRARY" ]; then
    echo "$LIBRARY"
    exit 0
fi
mkdir -p "$TARGET"
WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$VERSION" -d "$WHEELS" >&2
python3 - "$WHEELS" "$TARGET" "$VERSION" <<'PY'
import pathlib, sys, zipfile
wheels, target, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
wheel = next(wheels.glob("onnxruntime-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    member = f"onnxruntime/capi/libonnxruntime.so.{version}"
    data = archive.read(member)
(target / f"libonnxruntime.so.{version}.partial").write_bytes(data)
(target / f"libonnxruntime.so.{version}.partial").rename(target / f"libonnxruntime.so.{version}")
PY
echo "$LIBRARY"

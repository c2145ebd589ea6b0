#!/usr/bin/env bash
# Builds a Qdrant server from its public source, at the version the Qdrant tests use, outside
# the repository and cached: the second run prints the binary's path at once.
#
#   bash scripts/build-qdrant.sh            # prints the path of the qdrant binary
#   LOOKALIKE_QDRANT_URL=qdrant://127.0.0.1:6334 make test   # with that server running
#
# Why from source: no package registry this project can reach (crates.io, PyPI, npm, Debian)
# ships a Qdrant server. The build takes long (hundreds of crates; about an hour on 2 cores),
# which is why CI skips the Qdrant tests.
#
# Checked (session 12) from local mirrors of the sources (QDRANT_SRC, GIT_MIRRORS), where the
# mirror of Qdrant's tonic fork lacks the branch v1.18.3 names: the fork's commits from its
# v0.14.5-qdrant branch replayed onto tonic 0.14.8 from crates.io; the server built and ran the
# Qdrant tests, a three-node cluster among them.
#
# Environment:
#   QDRANT_VERSION   git tag to build (default v1.18.3, what tests/qdrant.rs was checked against)
#   QDRANT_SRC       a git repository holding that tag (default: clone github.com/qdrant/qdrant)
#   QDRANT_PROFILE   cargo profile (default ci: Qdrant's own fast-to-build profile, no LTO and
#                    no optimisation; `perf` gives a faster server for benchmarks, slower build)
#   GIT_MIRRORS      a folder of local mirrors named OWNER+NAME/repo; git dependencies of the
#                    Qdrant build are fetched from there when GitHub cannot be reached
#   LOOKALIKE_HOME   the asset cache (default ~/.cache/lookalike); the build lives in qdrant/
set -euo pipefail

version="${QDRANT_VERSION:-v1.18.3}"
profile="${QDRANT_PROFILE:-ci}"
home="${LOOKALIKE_HOME:-$HOME/.cache/lookalike}"
root="$home/qdrant/$version"
binary="$root/qdrant-$profile"

if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
mkdir -p "$root"

# Build tools Qdrant needs: protoc for its gRPC API, clang and cmake for its C dependencies.
missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v clang >/dev/null || missing+=(clang)
command -v cmake >/dev/null || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-qdrant: installing ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

src="$root/src"
if [ ! -d "$src/.git" ]; then
  origin="${QDRANT_SRC:-https://github.com/qdrant/qdrant}"
  echo "build-qdrant: checking out $version from $origin" >&2
  rm -rf "$src"
  git clone --quiet --no-checkout "$origin" "$src"
  git -C "$src" checkout --quiet "$version"
fi

# Git dependencies come from local mirrors when GitHub is out of reach (git's insteadOf, read by
# cargo through the git command line). A fork branch the mirrors lack is replaced by the crates.io
# release it forks (Qdrant patches tonic with a fork of the same version).
git_config=()
if [ -n "${GIT_MIRRORS:-}" ]; then
  for mirror in "$GIT_MIRRORS"/*+*/repo; do
    [ -d "$mirror" ] || continue
    name="$(basename "$(dirname "$mirror")")"
    git_config+=("url.file://$mirror.insteadOf=https://github.com/${name/+//}")
  done
fi
export CARGO_NET_GIT_FETCH_WITH_CLI=true
export GIT_CONFIG_COUNT=${#git_config[@]}
for i in "${!git_config[@]}"; do
  export "GIT_CONFIG_KEY_$i=${git_config[$i]%%=*}" "GIT_CONFIG_VALUE_$i=${git_config[$i]#*=}"
done
# A fork branch the mirrors lack (Qdrant patches tonic with a fork of the same version) is
# rebuilt: the crates.io release it forks, with the fork's own commits from the nearest branch of
# the same minor version the mirror has (`git diff upstream...branch`, replayed with patch).
while read -r crate url branch; do
  if git ls-remote --exit-code "$url" "refs/heads/$branch" >/dev/null 2>&1; then
    continue
  fi
  sed -i "\\|^$crate = { git = \"$url\", branch = \"$branch\" }|d" "$src/Cargo.toml"
  minor="$(echo "$branch" | sed -n 's/^\(v[0-9]*\.[0-9]*\)\..*-qdrant$/\1/p')"
  mirror="${GIT_MIRRORS:-}/$(echo "$url" | sed 's|https://github.com/||; s|/|+|')/repo"
  nearest=""
  if [ -n "$minor" ] && [ -d "$mirror" ]; then
    nearest="$(git -C "$mirror" branch --list "$minor.*-qdrant" --format='%(refname:short)' | sort -V | tail -1)"
  fi
  if [ -z "$nearest" ]; then
    echo "build-qdrant: $url has no branch $branch here; using the crates.io release of $crate" >&2
    continue
  fi
  (cd "$src" && cargo fetch --quiet)
  crate_version="$(awk -v c="$crate" '$0 == "name = \"" c "\"" {getline; gsub(/version = |"/, ""); print; exit}' "$src/Cargo.lock")"
  crate_file="$(ls "$HOME"/.cargo/registry/cache/*/"$crate-$crate_version.crate" | head -1)"
  fork="$root/$crate-$crate_version-fork"
  rm -rf "$fork" && mkdir -p "$fork"
  tar -xzf "$crate_file" -C "$fork" --strip-components=1
  upstream="$(git -C "$mirror" symbolic-ref --short HEAD)"
  git -C "$mirror" diff "$upstream...$nearest" -- "$crate/" | (cd "$fork" && patch --quiet -p2)
  echo "build-qdrant: $url has no branch $branch here; using $crate $crate_version from crates.io with the commits of $nearest" >&2
  sed -i "s|^\\[patch.crates-io\\]$|[patch.crates-io]\\n$crate = { path = \"$fork\" }|" "$src/Cargo.toml"
done < <(sed -n 's|^\([a-z_-]*\) = { git = "\(https://github.com/[^"]*\)", branch = "\([^"]*\)" }$|\1 \2 \3|p' "$src/Cargo.toml")

echo "build-qdrant: building qdrant $version (profile $profile) in $root; this takes long" >&2
(cd "$src" && CARGO_TARGET_DIR="$root/target" cargo build --profile "$profile" --bin qdrant)
cp "$root/target/$profile/qdrant" "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "$binary"

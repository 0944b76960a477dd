# Shared by deploy/container/* scripts (sourced, not run).
# shellcheck shell=bash

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# Debootstrap tarballs, tool venvs and logs; kept between runs so reruns are fast.
CACHE=${INGESTD_CONTAINER_CACHE:-$HOME/.cache/ingestd-container}
mkdir -p "$CACHE"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}

say() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
  echo "ERROR: $*" >&2
  exit 1
}

# ensure_apt [--no-install-recommends] PKG...: installs the Debian packages that are
# missing (needs root).
ensure_apt() {
  local missing=() pkg options=()
  if [[ ${1:-} == --no-install-recommends ]]; then
    options=("$1")
    shift
  fi
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${options[@]}" "${missing[@]}" >/dev/null
}

# dockerfile_arg NAME: the default value of `ARG NAME=...` in the Dockerfile.
dockerfile_arg() {
  sed -n "s/^ARG $1=//p" "$ROOT/Dockerfile" | head -1
}

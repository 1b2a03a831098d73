#!/usr/bin/env bash
# Builds the keyword/link filter plugin in four languages into target/plugins/<lang>-keyword.wasm:
# rust (via plugins/build.sh), js (componentize-js), python (componentize-py), c (clang-19 +
# the committed wit-bindgen bindings + wasm-tools). Installs what is missing first (npm ci, pip
# into .venv, apt packages), and skips a build whose inputs (sources, WIT, lock files, pinned
# tool versions) did not change. Built components are also kept by input
# hash in $INBOXD_PLUGIN_CACHE (default ~/.cache/inboxd/plugin-builds), so a fresh clone on
# the same machine copies them instead of rebuilding. Usage: plugins/build-languages.sh [lang...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out="${OUT:-$root/target/plugins}"
work="$root/target/plugins-build"
cache="${INBOXD_PLUGIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inboxd/plugin-builds}"

# Pinned tools (npm and pip pins live in each plugin's package-lock.json / requirements.txt).
APT_PACKAGES=(clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)

log() { printf 'build-languages: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

mkdir -p "$out" "$work" "$cache"
exec 9>"$work/.build-languages.lock"
flock 9

# ---- tools, each installed only when missing ----

need_node_modules() {
    local dir="$here/js-keyword"
    command -v node >/dev/null || { log "node 20+ is required (the machine's Node.js)"; exit 1; }
    if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        local t; t=$(now)
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        log "npm ci (js-keyword): $(since "$t")"
    fi
}

# A virtualenv in plugins/<name>/.venv with requirements.txt installed (re-run when it changes).
need_venv() {
    local dir="$here/$1"
    if [ ! -x "$dir/.venv/bin/python" ] || ! cmp -s "$dir/requirements.txt" "$dir/.venv/requirements.txt"; then
        local t; t=$(now)
        python3 -m venv "$dir/.venv"
        "$dir/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
        cp "$dir/requirements.txt" "$dir/.venv/requirements.txt"
        log "pip install ($1): $(since "$t")"
    fi
}

need_apt() {
    local missing=()
    for package in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
    local t; t=$(now)
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "apt-get install ${missing[*]}: $(since "$t")"
}

need_venv_python() { need_venv python-keyword; }
need_venv_c() { need_venv c-keyword; }

# ---- builds ----

# sha256 over the plugin's sources (not its installed tools) and the WIT, plus extra text.
inputs_hash() {
    local name="$1" extra="$2"
    {
        printf '%s\n' "$extra"
        cat "$root/wit/policy.wit"
        find "$here/$name" \( -name node_modules -o -name .venv -o -name __pycache__ \) -prune -o \
            -type f ! -name README.md -print | LC_ALL=C sort | while read -r file; do
            printf '%s\n' "${file#"$here/"}"
            cat "$file"
        done
    } | sha256sum | cut -d' ' -f1
}

# build NAME EXTRA_HASH_TEXT SETUP_FUNCTION...: skip, copy from the cache, or build.
build() {
    local name="$1" extra="$2"
    shift 2
    local hash target="$out/$name.wasm" stamp="$work/$name.inputs"
    hash=$(inputs_hash "$name" "$extra")
    if [ -f "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
        return
    fi
    local t; t=$(now)
    if [ -f "$cache/$name-$hash.wasm" ]; then
        cp "$cache/$name-$hash.wasm" "$target.tmp"
        mv "$target.tmp" "$target"
        echo "$hash" >"$stamp"
        log "$name: from the build cache ($(since "$t"))"
        return
    fi
    for setup in "$@"; do "$setup"; done
    t=$(now)
    "$here/$name/build.sh" "$target.tmp"
    cp "$target.tmp" "$cache/$name-$hash.wasm"
    mv "$target.tmp" "$target"
    echo "$hash" >"$stamp"
    log "$name: built in $(since "$t") ($(stat -c %s "$target") bytes) → $target"
}

languages=("$@")
[ ${#languages[@]} -gt 0 ] || languages=(rust js python c)
started=$(now)
for lang in "${languages[@]}"; do
    case "$lang" in
        rust) OUT="$out" "$here/build.sh" ;;
        js) build js-keyword "node $(node --version 2>/dev/null)" need_node_modules ;;
        python) build python-keyword "" need_venv_python ;;
        c) build c-keyword "${APT_PACKAGES[*]}" need_apt need_venv_c ;;
        *) log "unknown language $lang (rust, js, python, c)"; exit 2 ;;
    esac
done
log "done in $(since "$started")"

# Shared by hack/test and hack/demo: a project virtualenv with everything installed.
# Reinstalls only when pyproject.toml changed, so a warm run skips the install entirely.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${AGENT_ROUTER_VENV:-$root/.venv}
cache=${AGENT_ROUTER_CACHE:-$HOME/.cache/agent-router}

step() { printf '\n==> %s (%s)\n' "$*" "$(date +%H:%M:%S)" >&2; }

# uv installs the 200-odd packages from its cache in seconds where pip takes minutes (a
# clean clone makes a new virtualenv every time); both caches live beside the binaries.
ensure_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    step "creating $venv"
    python3 -m venv "$venv"
  fi
  local stamp
  stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    step "installing the project and its dependencies"
    local log="$venv/pip-install.log"
    # The machine's CA bundle (pip's too): uv trusts the system store, not its own.
    if ! { PIP_CACHE_DIR="$cache/pip" "$venv/bin/pip" install uv &&
           UV_CACHE_DIR="$cache/uv" UV_NATIVE_TLS=1 \
             "$venv/bin/uv" pip install --python "$venv/bin/python" -e "$root[dev]"; } \
        >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "installing the project failed; the whole log is in $log" >&2
      return 1
    fi
    rm -f "$venv"/.installed-*
    touch "$stamp"
  fi
}

# Debian packages the checks use (wrk: the sidecar benchmark's load, run briefly by
# tests/bench so it cannot rot). Installed only when a command is missing.
ensure_debian() {
  local missing=()
  for pair in "$@"; do  # command (or absolute path):package
    local cmd=${pair%%:*}
    if [[ $cmd == /* ]]; then
      [[ -e $cmd ]] || missing+=("${pair#*:}")
    else
      command -v "$cmd" >/dev/null 2>&1 || missing+=("${pair#*:}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing Debian packages: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# What the test node needs (tests/support/node.py): containerd and runc, the CNI plugins,
# iptables for kube-proxy, and what hack/images builds the images with.
NODE_PACKAGES=(containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins
               iptables:iptables nsenter:util-linux buildah:buildah debootstrap:debootstrap
               gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev)

# The Go-built binaries and the images, cached; exports AGENT_ROUTER_ASSETS and
# AGENT_ROUTER_IMAGES for what runs next.
ensure_node_inputs() {
  ensure_debian "${NODE_PACKAGES[@]}"
  local line
  line=$("$root/hack/test-binaries" | tail -n 1)
  export AGENT_ROUTER_ASSETS="${line#AGENT_ROUTER_ASSETS=}"
  step "images (hack/images: built once, then whenever their inputs change)"
  line=$("$root/hack/images" | tail -n 1)
  export AGENT_ROUTER_IMAGES="${line#AGENT_ROUTER_IMAGES=}"
}

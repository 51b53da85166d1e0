#!/usr/bin/env bash
# Installs and starts what isol8 needs on a fresh Debian or Ubuntu machine (idempotent):
# Docker Engine (Debian's docker.io, started in the background when no daemon answers),
# debootstrap (to build images where no container registry answers) and the Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || missing+=("$extra")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[..] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# gVisor (optional, for `security.runtime: "runsc"`): Debian's runsc, registered with its own
# network stack off (sandboxes under it use network "none").
if ! command -v runsc >/dev/null 2>&1; then
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq runsc >/dev/null 2>&1 \
    || echo "[WARN] runsc (gVisor) is not available here: its tests will be skipped"
fi
if command -v runsc >/dev/null 2>&1 && ! grep -q '"runsc"' /etc/docker/daemon.json 2>/dev/null; then
  $SUDO mkdir -p /etc/docker
  $SUDO python3 - "$(command -v runsc)" <<'PY'
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text() or "{}") if path.exists() else {}
config.setdefault("runtimes", {})["runsc"] = {"path": sys.argv[1], "runtimeArgs": ["--network=none"]}
path.write_text(json.dumps(config, indent=2) + "\n")
PY
  pid=$(pidof dockerd || true)
  [ -z "$pid" ] || $SUDO kill -HUP $pid  # the daemon reloads its runtimes without a restart
fi

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }
if ! docker_ok; then
  echo "[..] starting dockerd in the background (log: /var/log/isol8-dockerd.log)"
  $SUDO sh -c 'nohup dockerd >/var/log/isol8-dockerd.log 2>&1 &'
  for _ in $(seq 1 120); do docker_ok && break; sleep 0.5; done
  docker_ok || { echo "[ERR] dockerd did not start; see /var/log/isol8-dockerd.log" >&2; exit 1; }
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
echo "[OK] Docker, debootstrap and .venv are ready"

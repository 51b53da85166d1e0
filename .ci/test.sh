#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, builds the images
# (a no-op when up to date), lints, then runs pytest against the real Docker daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

# busybox-static and a static libc let the seccomp tests build their own probes; PostgreSQL
# backs the server's key-store tests; iproute2 brings up loopback in the cluster tests' namespace.
bash .ci/bootstrap.sh busybox-static gcc libc6-dev postgresql iproute2

# Networks that re-sign TLS (this project's CI) need their CA inside the images.
if [ -z "${ISOL8_CA_BUNDLE:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export ISOL8_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi

.venv/bin/isol8 setup
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# The agent's files import each other as top-level modules, as they do inside the image.
(cd engine/agent && ../../.venv/bin/mypy --config-file ../../pyproject.toml --explicit-package-bases ./*.py)
.venv/bin/pytest -q -p no:cacheprovider "$@"
# The Ray cluster tests (tests/cluster, skipped above) start a three-node cluster that must bind and
# advertise loopback only: a private network namespace with only `lo` up (Docker is still reached
# through its Unix socket there). A targeted run (with arguments) leaves them out.
if [ "$#" -eq 0 ]; then
  unshare -n sh -c 'ip link set lo up && exec .venv/bin/pytest -q -p no:cacheprovider tests/cluster'
fi

"""The hardened container settings every sandbox gets. Pure data: `docker.py` applies it.

Defaults deny: read-only root, tmpfs only where code may write, no network, every capability
dropped but the three the agent needs, no-new-privileges, a seccomp allowlist tighter than
Docker's own, and limits on memory (no extra swap), CPU and processes.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from engine.limits import parse_size
from engine.models import Isol8Options
from engine.runtimes import code_file, get_runtime
from engine.seccomp import seccomp_security_opt

# Uids no host account is likely to have: if a sandbox ever escaped, it would be nobody on the host.
# Every one is the user `sandbox` in the image (each with its own group). A container starts jobs as
# the first; the `fast` pool moves a reused container to the next one at each scrub, so a process
# that escaped every kill could still not read the next execution's files or /proc entries.
SANDBOX_UID = 61000
SANDBOX_GID = 61000
SANDBOX_UIDS = range(SANDBOX_UID, SANDBOX_UID + 16)
PROXY_UID = SANDBOX_UID - 1  # the filtered-network proxy's own unprivileged user, outside that range

# The only capabilities left to the root agent (PID 1); user code runs as `sandbox` with none.
CAPABILITIES = (
    "SETUID",  # start each job as the sandbox user
    "SETGID",  # ... with the sandbox group and no supplementary groups
    "KILL",  # kill every process of a job on timeout, even ones that changed session or group
)

# Filtered mode only: the agent sets the firewall that confines the sandbox users to the proxy.
FILTERED_CAPABILITIES = ("NET_ADMIN",)

# `fast` pool only: at each scrub the agent hands the writable roots to the next sandbox uid.
FAST_CAPABILITIES = ("CHOWN",)

MANAGED_LABEL = "isol8.managed"
OWNER_LABEL = "isol8.owner"


def owner_id(pid: int | None = None) -> str:
    """Host, pid and start time of a process: a later engine can tell whether it is still alive."""
    pid = pid or os.getpid()
    with open(f"/proc/{pid}/stat") as stat:
        started = stat.read().rsplit(")", 1)[1].split()[19]
    return f"{socket.gethostname()}/{pid}/{started}"


def owner_alive(owner: str) -> bool:
    """False when `owner` names a process of this host that no longer exists."""
    host, _, rest = owner.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host's engine: not ours to judge
    try:
        return owner_id(int(pid)) == owner
    except OSError:
        return False


def container_config(options: Isol8Options, image: str, runtime: str) -> dict[str, Any]:
    """Keyword arguments for docker-py's `create_container` (with `host_config` as a dict)."""
    memory = parse_size(options.memory_limit)
    filtered = options.network == "filtered"
    network_mode = {"none": "none", "host": "host", "filtered": options.docker_network or "bridge"}
    host_config: dict[str, Any] = {
        "read_only": True,
        "tmpfs": {
            "/sandbox": (
                f"rw,exec,nosuid,nodev,size={parse_size(options.sandbox_size)},"
                f"uid={SANDBOX_UID},gid={SANDBOX_GID},mode=0755"
            ),
            "/tmp": f"rw,noexec,nosuid,nodev,size={parse_size(options.tmp_size)},mode=1777",
        },
        "cap_drop": ["ALL"],
        "cap_add": [
            *CAPABILITIES,
            *(FILTERED_CAPABILITIES if filtered else ()),
            *(FAST_CAPABILITIES if options.pool_strategy == "fast" and options.mode == "ephemeral" else ()),
        ],
        "security_opt": [
            "no-new-privileges",
            seccomp_security_opt(options.security.seccomp, options.security.custom_profile_path),
        ],
        "pids_limit": options.pids_limit,
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(options.cpu_limit * 1e9),
        "network_mode": network_mode[options.network],
        "ipc_mode": "private",
        "log_config": {"type": "none", "config": {}},
        "auto_remove": not options.persist,
        "ulimits": [{"name": "core", "soft": 0, "hard": 0}],
    }
    if options.security.runtime:
        host_config["runtime"] = options.security.runtime  # e.g. runsc (gVisor), where registered
        # gVisor's own kernel runs in the container's cgroup, and its threads count as pids there:
        # the process limit moves inside, as RLIMIT_NPROC, which its kernel enforces per user.
        host_config["pids_limit"] = None
        host_config["ulimits"].append({"name": "nproc", "soft": options.pids_limit, "hard": options.pids_limit})
    environment = {}
    spec = get_runtime(runtime)
    prestart = spec.warm_argv(code_file(spec, None), {})
    if prestart:  # the agent starts this interpreter before the first job (inline code's file)
        environment["ISOL8_PRESTART"] = json.dumps(prestart)
    if filtered:
        host_config["sysctls"] = {"net.ipv6.conf.all.disable_ipv6": "1"}
        environment["ISOL8_NETWORK"] = options.network_filter.model_dump_json()
    return {
        "image": image,
        # docker-py sets StdinOnce with stdin_open: when the engine's attach closes (even if the
        # engine is killed), the agent sees EOF and exits, and auto-remove deletes the container.
        "stdin_open": True,
        "tty": False,
        "user": "0:0",
        "working_dir": "/sandbox",
        "network_disabled": options.network == "none",
        "environment": environment,
        "labels": {
            MANAGED_LABEL: "true",
            OWNER_LABEL: owner_id(),
            "isol8.runtime": runtime,
            "isol8.mode": "persist" if options.persist else options.mode,
        },
        "host_config": host_config,
        "keep": options.persist,  # --persist: the container outlives the engine, for debugging
    }

"""Seccomp profiles for isol8 containers, turned into values for Docker's `security_opt`.

`strict` (the default) is Docker's own allowlist profile, moby `profiles/seccomp/default.json` (moby/moby
commit 00f3d189e420d485e42d15fe494f96d272284e0e), made tighter: `defaultAction` stays `SCMP_ACT_ERRNO`
(EPERM) and every syscall in `REMOVED_SYSCALLS` is taken out of every allow rule. In detail:

- every capability-conditional rule (`includes.caps`) is gone, so granting a capability to a container
  never re-opens a syscall (Docker's default re-allows e.g. `unshare`/`mount` with CAP_SYS_ADMIN and
  `chroot` with CAP_SYS_CHROOT, which Docker grants by default);
- `clone` keeps Docker's namespace-flag mask for everyone (the CAP_SYS_ADMIN exclusion is dropped), and
  `clone3`, whose flags live in memory seccomp cannot inspect, fails with ENOSYS for everyone so glibc,
  Go and Rust fall back to the filtered `clone` (threads and fork keep working);
- the `minKernel`-gated `ptrace`/`process_vm_*` rule is gone, so no `minKernel` condition is left;
- `personality` keeps Docker's arg-restricted rules (0, PER_LINUX32, UNAME26, their mix, 0xffffffff query).

The JSON carries no comments: Docker 20.10 silently ignores unknown keys, so they would be harmless but
would drift from the code; the reasons live here instead. Unknown syscall names are skipped by runc, so
the same profile loads on older kernels and libseccomp.
"""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, get_args

from engine.errors import ConfigError
from engine.models import SeccompMode

_STRICT_RESOURCE: Traversable = files("engine.profiles").joinpath("seccomp-strict.json")
STRICT_PROFILE_PATH: Path = Path(str(_STRICT_RESOURCE))
"""The packaged strict profile (inside the installed `engine.profiles` package, wheel or source tree)."""

REMOVED_SYSCALLS: frozenset[str] = frozenset(
    {
        # Inspecting or tampering with other processes: reads secrets and escapes via other PIDs.
        *("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise"),
        # Large, frequently exploited kernel surfaces that no supported runtime needs.
        *("bpf", "perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register"),
        # Namespaces, mounts and root changes: the building blocks of container escapes.
        *("unshare", "setns", "mount", "umount", "umount2", "chroot", "clone3"),
        *("fsconfig", "fsmount", "fsopen", "fspick", "mount_setattr", "move_mount", "open_tree"),
        # File handles bypass path checks (the "shocker" escape).
        *("name_to_handle_at", "open_by_handle_at"),
        # NUMA memory policy: host-topology knobs, no use in a sandbox.
        *("mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node"),
        # Host administration: logs, accounting, quotas, modules, reboot, raw I/O ports, host names.
        *("fanotify_init", "lookup_dcookie", "quotactl", "quotactl_fd", "syslog", "acct", "reboot"),
        *("init_module", "finit_module", "delete_module", "iopl", "ioperm", "modify_ldt", "vhangup"),
        *("sethostname", "setdomainname"),
        # Clocks are host-global: setting or tuning them affects every tenant.
        *("clock_settime", "clock_settime64", "settimeofday", "stime", "clock_adjtime", "clock_adjtime64"),
        "adjtimex",
    }
)
"""Syscalls that Docker's default profile allows (at least with some capability) and strict never does."""

ALREADY_DENIED_BY_DEFAULT: frozenset[str] = frozenset(
    {
        *("keyctl", "add_key", "request_key", "userfaultfd", "pivot_root", "move_pages"),
        *("swapon", "swapoff", "kexec_load", "kexec_file_load"),
    }
)
"""Dangerous syscalls Docker's default already denies; strict must keep denying them (checked by tests)."""

_MISSING_CUSTOM_PATH = (
    'security.seccomp is "custom" but security.customProfilePath is not set. '
    'Set it to a seccomp JSON profile, or use "strict".'
)


def seccomp_security_opt(mode: SeccompMode, custom_profile_path: str | None) -> str:
    """The `security_opt` entry for `mode`: Docker wants the profile's JSON text inline, not a path."""
    if mode == "strict":
        return f"seccomp={_strict_profile_text()}"
    if mode == "unconfined":
        return "seccomp=unconfined"
    if mode == "custom":
        if not custom_profile_path:
            raise ConfigError(_MISSING_CUSTOM_PATH)
        try:
            text = _compact_profile(Path(custom_profile_path).expanduser().read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(
                f"Failed to load custom seccomp profile at {custom_profile_path}: {_reason(exc)}"
            ) from exc
        return f"seccomp={text}"
    *others, last = (f'"{name}"' for name in get_args(SeccompMode))
    raise ConfigError(f'Unknown seccomp mode "{mode}". Use {", ".join(others)} or {last}.')


@functools.cache
def _strict_profile_text() -> str:
    """Compact strict profile, read once per process: it is on the hot path of every container create."""
    try:
        return _compact_profile(_STRICT_RESOURCE.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"Failed to load default seccomp profile: {_reason(exc)}") from exc


def _compact_profile(text: str) -> str:
    """Validate a profile's shape and re-serialise it compactly (it travels in every create request)."""
    profile: Any = json.loads(text)
    if not isinstance(profile, dict):
        raise ValueError("profile must be a JSON object")
    action = profile.get("defaultAction")
    if not isinstance(action, str) or not action:
        raise ValueError('profile has no "defaultAction" string')
    rules = profile.get("syscalls")
    if not isinstance(rules, list):
        raise ValueError('profile has no "syscalls" list')
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict) or not isinstance(rule.get("action"), str):
            raise ValueError(f'syscalls[{index}] must be an object with an "action" string')
    return json.dumps(profile, separators=(",", ":"))


def _reason(exc: BaseException) -> str:
    """One-line cause: the OS error text without the errno prefix, or the validation message."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif isinstance(exc, json.JSONDecodeError):
        reason = f"invalid JSON: {exc}"
    else:
        reason = str(exc) or type(exc).__name__
    return " ".join(reason.split())

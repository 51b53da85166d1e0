"""The strict seccomp profile, its loader, and real-daemon proof that strict is tighter than Docker's."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import DockerException, ImageNotFound

from engine import seccomp
from engine.errors import ConfigError
from engine.seccomp import (
    ALREADY_DENIED_BY_DEFAULT,
    REMOVED_SYSCALLS,
    STRICT_PROFILE_PATH,
    seccomp_security_opt,
)

EPERM = 1
ENOSYS = 38
CLONE_NAMESPACE_MASK = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
DENYING_ACTIONS = {"SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD"}

# Everything the brief asked strict to block; each must be either removed or already denied by Docker.
MUST_BE_DENIED = {
    *("ptrace", "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "bpf"),
    *("perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "unshare"),
    *("setns", "mount", "umount2", "pivot_root", "chroot", "kcmp", "name_to_handle_at", "open_by_handle_at"),
    *("move_pages", "mbind", "set_mempolicy", "get_mempolicy", "fanotify_init", "lookup_dcookie", "quotactl"),
    *("syslog", "acct", "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load", "init_module"),
    *("finit_module", "delete_module", "clock_settime", "clock_adjtime", "settimeofday", "vhangup"),
}

# What python3, node, bun, deno, bash and the root-then-drop agent need unconditionally.
RUNTIME_ESSENTIALS = {
    *("read", "write", "openat", "close", "mmap", "mprotect", "munmap", "brk", "execve", "exit_group"),
    *("futex", "wait4", "waitid", "kill", "tgkill", "prctl", "setuid", "setgid", "setgroups", "setresuid"),
    *("setresgid", "epoll_wait", "epoll_ctl", "pipe2", "dup3", "getrandom", "rt_sigaction", "madvise"),
    *("membarrier", "sched_yield", "fork", "vfork", "arch_prctl", "set_robust_list", "rseq", "socketpair"),
}


def strict_profile() -> dict[str, Any]:
    return json.loads(STRICT_PROFILE_PATH.read_text(encoding="utf-8"))


def rule_names(rule: dict[str, Any]) -> set[str]:
    """Names of a rule, including the deprecated single `name` key Docker still accepts."""
    return set(rule.get("names") or []) | ({rule["name"]} if rule.get("name") else set())


def allowing_rules(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Rules whose action lets the syscall run (ALLOW, LOG, TRACE, NOTIFY …): anything not errno/kill."""
    return [rule for rule in profile["syscalls"] if rule["action"] not in DENYING_ACTIONS]


def unconditionally_allowed(profile: dict[str, Any]) -> set[str]:
    """Syscalls allowed without argument filters (arch-only includes are fine: this is amd64)."""
    names: set[str] = set()
    for rule in allowing_rules(profile):
        includes = rule.get("includes") or {}
        if rule.get("args") or set(includes) - {"arches"}:
            continue
        if includes.get("arches") and "amd64" not in includes["arches"]:
            continue
        names |= rule_names(rule)
    return names


@pytest.fixture
def fresh_strict_cache() -> Iterator[None]:
    """Tests that swap the strict resource must neither see nor leave a cached profile."""
    seccomp._strict_profile_text.cache_clear()
    yield
    seccomp._strict_profile_text.cache_clear()


# --- loader ---------------------------------------------------------------------------------------------


def test_strict_opt_is_the_packaged_profile_compacted() -> None:
    opt = seccomp_security_opt("strict", None)
    assert opt.startswith("seccomp={")
    text = opt.removeprefix("seccomp=")
    assert json.loads(text) == strict_profile()
    assert "\n" not in text and "\t" not in text and ", " not in text


def test_strict_profile_is_read_once(fresh_strict_cache: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = seccomp_security_opt("strict", None)
    monkeypatch.setattr(seccomp, "_STRICT_RESOURCE", tmp_path / "gone.json")
    assert seccomp_security_opt("strict", None) == first


def test_packaged_profile_lives_in_engine_profiles() -> None:
    assert STRICT_PROFILE_PATH.name == "seccomp-strict.json"
    assert STRICT_PROFILE_PATH.parent.name == "profiles"
    assert (STRICT_PROFILE_PATH.parent / "__init__.py").is_file()
    assert STRICT_PROFILE_PATH.is_file()


def test_unconfined() -> None:
    assert seccomp_security_opt("unconfined", None) == "seccomp=unconfined"
    assert seccomp_security_opt("unconfined", "/ignored.json") == "seccomp=unconfined"


def test_custom_profile_is_validated_and_compacted(tmp_path: Path) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
    }
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(profile, indent=4), encoding="utf-8")
    assert seccomp_security_opt("custom", str(path)) == "seccomp=" + json.dumps(profile, separators=(",", ":"))


@pytest.mark.parametrize("path", [None, ""])
def test_custom_without_path(path: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("custom", path)
    assert str(info.value) == (
        'security.seccomp is "custom" but security.customProfilePath is not set. '
        'Set it to a seccomp JSON profile, or use "strict".'
    )


def test_custom_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("custom", str(path))
    assert str(info.value) == f"Failed to load custom seccomp profile at {path}: No such file or directory"


def test_custom_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("custom", str(tmp_path))
    assert str(info.value) == f"Failed to load custom seccomp profile at {tmp_path}: Is a directory"


def test_custom_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"defaultAction": "SCMP_ACT_ERRNO",\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("custom", str(path))
    message = str(info.value)
    assert message.startswith(f"Failed to load custom seccomp profile at {path}: invalid JSON: ")
    assert "line 2" in message and "\n" not in message


def test_custom_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"defaultAction": "\xff"}')
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("custom", str(path))
    assert str(info.value).startswith(f"Failed to load custom seccomp profile at {path}: ")
    assert "utf-8" in str(info.value)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([], "profile must be a JSON object"),
        ("SCMP_ACT_ERRNO", "profile must be a JSON object"),
        ({"syscalls": []}, 'profile has no "defaultAction" string'),
        ({"defaultAction": 1, "syscalls": []}, 'profile has no "defaultAction" string'),
        ({"defaultAction": "SCMP_ACT_ERRNO"}, 'profile has no "syscalls" list'),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}, 'profile has no "syscalls" list'),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]},
            'syscalls[0] must be an object with an "action" string',
        ),
    ],
)
def test_custom_wrong_shape(tmp_path: Path, document: Any, reason: str) -> None:
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("custom", str(path))
    assert str(info.value) == f"Failed to load custom seccomp profile at {path}: {reason}"


def test_strict_unreadable(fresh_strict_cache: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "_STRICT_RESOURCE", tmp_path / "missing.json")
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("strict", None)
    assert str(info.value) == "Failed to load default seccomp profile: No such file or directory"


def test_strict_wrong_shape(fresh_strict_cache: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "strict.json"
    path.write_text('{"syscalls": []}', encoding="utf-8")
    monkeypatch.setattr(seccomp, "_STRICT_RESOURCE", path)
    with pytest.raises(ConfigError) as info:
        seccomp_security_opt("strict", None)
    assert str(info.value) == 'Failed to load default seccomp profile: profile has no "defaultAction" string'


def test_unknown_mode() -> None:
    with pytest.raises(ConfigError, match='Unknown seccomp mode "lax"'):
        seccomp_security_opt("lax", None)  # type: ignore[arg-type]


# --- the strict profile itself --------------------------------------------------------------------------


def test_strict_is_an_allowlist() -> None:
    profile = strict_profile()
    assert profile["defaultAction"] in DENYING_ACTIONS
    assert profile.get("defaultErrnoRet", EPERM) == EPERM


def test_removed_syscalls_are_in_no_allowing_rule() -> None:
    forbidden = REMOVED_SYSCALLS | ALREADY_DENIED_BY_DEFAULT
    for rule in allowing_rules(strict_profile()):
        assert not rule_names(rule) & forbidden, rule


def test_brief_list_is_covered() -> None:
    assert MUST_BE_DENIED <= REMOVED_SYSCALLS | ALREADY_DENIED_BY_DEFAULT
    assert not REMOVED_SYSCALLS & ALREADY_DENIED_BY_DEFAULT


def test_no_capability_can_reopen_a_syscall() -> None:
    for rule in strict_profile()["syscalls"]:
        assert "caps" not in (rule.get("includes") or {}), rule
        assert "caps" not in (rule.get("excludes") or {}), rule
        assert "minKernel" not in (rule.get("includes") or {}), rule


def test_clone_never_creates_namespaces() -> None:
    rules = strict_profile()["syscalls"]
    clone_rules = [rule for rule in allowing_rules({"syscalls": rules}) if "clone" in rule_names(rule)]
    assert clone_rules
    for rule in clone_rules:
        assert rule_names(rule) == {"clone"}
        assert [(arg["value"], arg["op"]) for arg in rule["args"]] == [(CLONE_NAMESPACE_MASK, "SCMP_CMP_MASKED_EQ")]
    clone3 = [rule for rule in rules if "clone3" in rule_names(rule)]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}]


def test_personality_only_with_docker_arguments() -> None:
    rules = [rule for rule in allowing_rules(strict_profile()) if "personality" in rule_names(rule)]
    values = sorted(arg["value"] for rule in rules for arg in rule["args"] if arg["op"] == "SCMP_CMP_EQ")
    assert all(len(rule["args"]) == 1 for rule in rules)
    assert values == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def test_runtime_essentials_still_allowed() -> None:
    assert unconditionally_allowed(strict_profile()) >= RUNTIME_ESSENTIALS


# --- real daemon ----------------------------------------------------------------------------------------

IMAGE_REPO = "isol8-seccomp-test"
IMAGE = f"{IMAGE_REPO}:latest"
LABELS = {"isol8.managed": "true", "isol8.test": "test_seccomp"}
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "true", "cat", "grep", "mkdir", "chroot", "unshare")

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Prints "<probe> <errno>" (0 = success) for each probe named on the command line. */
static void *thread_main(void *arg) { return arg; }

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i];
        int err = 0;
        errno = 0;
        if (!strcmp(name, "io_uring_setup")) {
            struct io_uring_params params;
            memset(&params, 0, sizeof params);
            if (syscall(SYS_io_uring_setup, 1, &params) < 0) err = errno;
        } else if (!strcmp(name, "ptrace")) {
            pid_t pid = fork();
            if (pid == 0) _exit(ptrace(PTRACE_TRACEME, 0, 0, 0) == 0 ? 0 : errno);
            int status = 0;
            waitpid(pid, &status, 0);
            err = WEXITSTATUS(status);
        } else if (!strcmp(name, "clone3")) {
            if (syscall(SYS_clone3, NULL, 0) < 0) err = errno;
        } else if (!strcmp(name, "thread")) {
            pthread_t thread;
            err = pthread_create(&thread, NULL, thread_main, NULL);
            if (!err) pthread_join(thread, NULL);
        } else if (!strcmp(name, "dropuser")) {
            gid_t gid = 65534;
            if (setgroups(1, &gid) || setgid(65534) || setuid(65534)) err = errno;
            else if (getuid() != 65534) err = -1;
        } else {
            fprintf(stderr, "unknown probe %s\n", name);
            return 2;
        }
        printf("%s %d\n", name, err);
    }
    return 0;
}
"""


@dataclass(frozen=True)
class ProbeImage:
    """The throwaway image: busybox always, the C probe only where gcc could build it statically."""

    tag: str
    probe_error: str | None


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without PT_INTERP (runs in an image with no libc)."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        return False
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def build_probe(workdir: Path) -> tuple[Path | None, str | None]:
    """Compile the probe statically; the reason it could not be built otherwise."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc is not installed, so the syscall probe cannot be built"
    source = workdir / "probe.c"
    source.write_text(PROBE_C, encoding="utf-8")
    binary = workdir / "probe"
    result = subprocess.run(
        [gcc, "-static", "-O2", "-pthread", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None, f"static build of the syscall probe failed: {result.stderr.strip()[-300:]}"
    return binary, None


def rootfs_tar(probe: Path | None) -> bytes:
    """A tiny root filesystem: /bin/busybox, its applet symlinks, and the probe if built."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        if probe is not None:
            tar.add(str(probe), arcname="bin/probe")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """docker-py client for the real daemon; skips when there is none or it lacks seccomp."""
    try:
        client = docker.from_env()
        info = client.info()
    except DockerException as exc:
        pytest.skip(f"`docker info` failed, no usable Docker daemon: {exc}")
    if not any("seccomp" in opt for opt in info.get("SecurityOptions") or []):
        pytest.skip("this Docker daemon has no seccomp support, so profiles cannot be compared")
    yield client
    client.close()


@pytest.fixture(scope="session")
def probe_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProbeImage]:
    """`docker import` a busybox(+probe) tarball; removes the image and any leftover containers after."""
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} is missing: install Debian's busybox-static package")
    if not is_static_elf(BUSYBOX):
        pytest.skip(f"{BUSYBOX} is dynamically linked: install busybox-static instead of busybox")
    workdir = tmp_path_factory.mktemp("seccomp-image")
    probe, probe_error = build_probe(workdir)
    tarball = workdir / "rootfs.tar"
    tarball.write_bytes(rootfs_tar(probe))
    with contextlib.suppress(ImageNotFound):
        docker_client.images.remove(IMAGE, force=True)  # a stale tag from an aborted run would dangle
    docker_client.api.import_image_from_file(
        str(tarball), repository=IMAGE_REPO, tag="latest", changes=["LABEL isol8.managed=true"]
    )
    try:
        yield ProbeImage(IMAGE, probe_error)
    finally:
        for container in docker_client.containers.list(all=True, filters={"label": "isol8.test=test_seccomp"}):
            container.remove(force=True)
        docker_client.images.remove(IMAGE, force=True)


def run(
    client: Any,
    image: ProbeImage,
    command: list[str],
    security_opt: list[str] | None,
    cap_add: list[str] | None = None,
) -> tuple[int, str]:
    """Run `command` to completion in a labelled, network-less container, then remove it: (exit, output)."""
    container = client.containers.create(
        image.tag,
        command,
        security_opt=security_opt,
        cap_add=cap_add,
        labels=LABELS,
        network_mode="none",
    )
    try:
        container.start()
        status = container.wait(timeout=60)["StatusCode"]
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    return status, output


def probe(client: Any, image: ProbeImage, names: list[str], security_opt: list[str] | None) -> dict[str, int]:
    """Run the C probe; {probe name: errno} with 0 meaning the syscall succeeded."""
    if image.probe_error:
        pytest.skip(image.probe_error)
    status, output = run(client, image, ["/bin/probe", *names], security_opt)
    assert status == 0, output
    return {name: int(err) for name, err in (line.split() for line in output.splitlines())}


STRICT = [seccomp_security_opt("strict", None)]
DAEMON_DEFAULT = None  # no seccomp security_opt: the daemon applies Docker's default profile


@pytest.mark.docker
def test_strict_runs_ordinary_commands(docker_client: Any, probe_image: ProbeImage) -> None:
    assert run(docker_client, probe_image, ["echo", "ok"], STRICT) == (0, "ok\n")
    status, output = run(docker_client, probe_image, ["sh", "-c", "echo piped | cat; mkdir /tmp/d"], STRICT)
    assert (status, output) == (0, "piped\n")


@pytest.mark.docker
def test_strict_filter_is_installed(docker_client: Any, probe_image: ProbeImage) -> None:
    status, output = run(docker_client, probe_image, ["grep", "^Seccomp:", "/proc/self/status"], STRICT)
    assert (status, output.split()) == (0, ["Seccomp:", "2"])


@pytest.mark.docker
def test_unconfined_has_no_filter(docker_client: Any, probe_image: ProbeImage) -> None:
    unconfined = [seccomp_security_opt("unconfined", None)]
    status, output = run(docker_client, probe_image, ["grep", "^Seccomp:", "/proc/self/status"], unconfined)
    assert (status, output.split()) == (0, ["Seccomp:", "0"])


@pytest.mark.docker
def test_custom_profile_is_what_runs(docker_client: Any, probe_image: ProbeImage, tmp_path: Path) -> None:
    profile = strict_profile()
    for rule in profile["syscalls"]:
        rule["names"] = [name for name in rule["names"] if name not in {"mkdir", "mkdirat"}]
    path = tmp_path / "no-mkdir.json"
    path.write_text(json.dumps(profile), encoding="utf-8")
    custom = [seccomp_security_opt("custom", str(path))]
    assert run(docker_client, probe_image, ["echo", "ok"], custom) == (0, "ok\n")
    status, output = run(docker_client, probe_image, ["mkdir", "/tmp/d"], custom)
    assert status != 0 and "Operation not permitted" in output


@pytest.mark.docker
def test_chroot_default_allows_strict_blocks(docker_client: Any, probe_image: ProbeImage) -> None:
    """Docker grants CAP_SYS_CHROOT and its profile then allows chroot; strict does not."""
    command = ["chroot", "/", "/bin/true"]
    assert run(docker_client, probe_image, command, DAEMON_DEFAULT) == (0, "")
    status, output = run(docker_client, probe_image, command, STRICT)
    assert status != 0 and "Operation not permitted" in output


@pytest.mark.docker
def test_unshare_blocked_even_with_sys_admin(docker_client: Any, probe_image: ProbeImage) -> None:
    """Docker's profile re-allows unshare with CAP_SYS_ADMIN; strict keeps it shut for everyone."""
    command = ["unshare", "-n", "true"]
    assert run(docker_client, probe_image, command, DAEMON_DEFAULT, cap_add=["SYS_ADMIN"]) == (0, "")
    for cap_add in (None, ["SYS_ADMIN"]):
        status, output = run(docker_client, probe_image, command, STRICT, cap_add=cap_add)
        assert status != 0 and "Operation not permitted" in output


@pytest.mark.docker
def test_ptrace_default_allows_strict_blocks(docker_client: Any, probe_image: ProbeImage) -> None:
    assert probe(docker_client, probe_image, ["ptrace"], DAEMON_DEFAULT) == {"ptrace": 0}
    assert probe(docker_client, probe_image, ["ptrace"], STRICT) == {"ptrace": EPERM}


@pytest.mark.docker
def test_io_uring_default_allows_strict_blocks(docker_client: Any, probe_image: ProbeImage) -> None:
    """Docker 20.10-24 allow io_uring; strict must not (newer Dockers deny it too, then this skips)."""
    assert probe(docker_client, probe_image, ["io_uring_setup"], STRICT) == {"io_uring_setup": EPERM}
    default = probe(docker_client, probe_image, ["io_uring_setup"], DAEMON_DEFAULT)["io_uring_setup"]
    if default != 0:
        pytest.skip(f"io_uring_setup fails under this daemon's own default profile too (errno {default})")


@pytest.mark.docker
def test_strict_keeps_threads_and_privilege_drop(docker_client: Any, probe_image: ProbeImage) -> None:
    """clone3 must fail with ENOSYS (not EPERM) so glibc falls back to clone() and threads still start."""
    results = probe(docker_client, probe_image, ["clone3", "thread", "dropuser"], STRICT)
    assert results == {"clone3": ENOSYS, "thread": 0, "dropuser": 0}

"""The operator's policy over what a remote client may ask for.

The reference server spread a client's `options` over its own, so any client could turn seccomp off,
open the host network or pick an image. Here a client's options are checked against the config's
`server` section: anything it does not allow is refused (403, naming the option) and everything
else starts from the operator's config, never from built-in defaults.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from engine.agent.proxy import HTTPS_PORT
from engine.config import Isol8Config
from engine.errors import Isol8Error, NotStateful, PolicyRefused
from engine.limits import parse_size
from engine.models import (
    CONTAINER_LIMITS,
    AuditOptions,
    ExecutionRequest,
    Isol8Options,
    Model,
    NetworkFilter,
    NetworkMode,
    RemoteCodePolicy,
    RequestLimits,
    SeccompMode,
    SecurityOptions,
    valid_env,
)

MINIMUMS: tuple[tuple[str, str, str | float | int], ...] = (
    ("memoryLimit", "memory_limit", "16m"),
    ("cpuLimit", "cpu_limit", 0.1),
    ("pidsLimit", "pids_limit", 4),
)
"""The smallest limits a sandbox works with (JSON name, field, minimum). Below them the container dies
before the code runs (measured: 8m of memory, or 2 processes for python's agent and zygote), or
crawls: at 0.01 CPU a container takes 8 s to start and under load misses the agent's 30 s hello (a
value that rounds to 0 nano-CPUs would even mean *no* limit). A client would see a 500, or a slot
held for seconds, for what is really a bad request."""


class ClientSecurity(Model):
    seccomp: SeccompMode | None = None
    custom_profile_path: str | None = None
    runtime: str | None = None


class ClientOptions(RequestLimits):
    """The `options` of an execute call (the reference's Isol8Options, as its clients send them).

    Every field is optional: what a client leaves out comes from the server's config. `mode`,
    `runtime`, `poolStrategy`, `poolSize`, `maxConcurrent` and `debug` are the server's to decide;
    they are accepted so reference clients work, and ignored.
    """

    network: NetworkMode | None = None
    network_filter: NetworkFilter | None = None
    log_network: bool | None = None
    security: ClientSecurity | None = None
    image: str | None = None
    secrets: dict[str, str] = Field(default_factory=dict)
    timeout_ms: int | None = Field(default=None, gt=0)
    readonly_root_fs: bool | None = None
    persist: bool | None = None
    mode: str | None = None
    runtime: str | None = None
    pool_strategy: str | None = None
    pool_size: Any = None
    max_concurrent: int | None = None
    debug: bool | None = None
    remote_code: RemoteCodePolicy | None = None
    audit: AuditOptions | None = None
    # With a sessionId: the session keeps one interpreter whose variables survive between runs.
    # Fixed when the session is created; asking otherwise of an existing session is refused.
    stateful: bool | None = None

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, secrets: dict[str, str]) -> dict[str, str]:
        """As ExecutionRequest checks its own: these are merged into the request unvalidated."""
        return valid_env(secrets)


@dataclass(frozen=True)
class Plan:
    """What to run and on which engine, after the policy check."""

    engine_options: Isol8Options  # ephemeral; also the key of the shared engine that runs it
    request: ExecutionRequest  # the client's request with its options' limits and secrets folded in
    stateful: bool | None = None  # what the client asked (None: whatever the session is)

    def session_options(self) -> Isol8Options:
        """A new session's engine: persistent, its runtime, limits and statefulness fixed by its first
        request."""
        limits = {name: getattr(self.request, name) for name in CONTAINER_LIMITS}
        update = {name: value for name, value in limits.items() if value is not None}
        fixed = {"mode": "persistent", "runtime": self.request.runtime, "stateful": bool(self.stateful)}
        return self.engine_options.model_copy(update={**update, **fixed})

    def check_session(self, session: Isol8Options) -> None:
        """Refuse a statefulness the client asked that an existing session does not have."""
        if self.stateful is None or self.stateful == session.stateful:
            return
        if self.stateful:
            raise NotStateful(
                "This session was created without stateful: it cannot become stateful; "
                "use a new sessionId for a stateful session"
            )
        raise Isol8Error(
            "This session is stateful: it cannot run without its interpreter; "
            "leave stateful out (or true), or use a new sessionId"
        )


def _listing(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


class Policy:
    """Checks client options against the config and turns them into a Plan."""

    def __init__(self, config: Isol8Config) -> None:
        self.config = config
        server, defaults = config.server, config.defaults
        # (JSON name, request field, the most a client may ask for, how to compare)
        self._limits: list[tuple[str, str, Any]] = [
            ("timeoutMs", "timeout_ms", max(server.max_timeout_ms, defaults.timeout_ms)),
            ("memoryLimit", "memory_limit", _larger(server.max_memory_limit, defaults.memory_limit)),
            ("cpuLimit", "cpu_limit", max(server.max_cpu_limit, defaults.cpu_limit)),
            ("pidsLimit", "pids_limit", max(server.max_pids_limit, defaults.pids_limit)),
            ("sandboxSize", "sandbox_size", _larger(server.max_sandbox_size, defaults.sandbox_size)),
            ("tmpSize", "tmp_size", _larger(server.max_tmp_size, defaults.tmp_size)),
            ("maxOutputSize", "max_output_size", max(server.max_output_size, defaults.max_output_size)),
        ]

    def plan(self, request: ExecutionRequest, options: ClientOptions | None) -> Plan:
        """Refuse (PolicyRefused) or return the engine options and request to run."""
        options = options or ClientOptions()
        self._check_flags(options)
        folded = self._fold(request, options)
        self._check_limits(options)  # also the values the request's own ones override: asked is asked
        self._check_limits(folded)
        engine_options = self.config.engine_options(
            network=self._network(options),
            network_filter=self.network_filter(options.network_filter),
            log_network=options.log_network,
            security=self._security(options),
            image=self._image(options),
            remote_code=self._remote_code(options),
        )
        return Plan(engine_options=engine_options, request=folded, stateful=options.stateful)

    # --- checks -----------------------------------------------------------------------------------
    def _check_flags(self, options: ClientOptions) -> None:
        if options.readonly_root_fs is False:
            raise PolicyRefused("readonlyRootFs false is not allowed: the root filesystem is always read-only")
        if options.persist:
            raise PolicyRefused("persist is not allowed on a server: it would leave containers running")

    def _fold(self, request: ExecutionRequest, options: ClientOptions) -> ExecutionRequest:
        """Option-level limits and secrets become request-level (the request's own values win)."""
        update: dict[str, Any] = {}
        for name in (*CONTAINER_LIMITS, "timeout_ms", "max_output_size"):
            if getattr(request, name) is None and getattr(options, name) is not None:
                update[name] = getattr(options, name)
        if options.secrets:
            update["secrets"] = {**options.secrets, **request.secrets}
        return request.model_copy(update=update) if update else request

    def _check_limits(self, request: ExecutionRequest | ClientOptions) -> None:
        for json_name, field, minimum in MINIMUMS:
            value = getattr(request, field)
            if value is None:
                continue
            too_small = parse_size(value) < parse_size(minimum) if isinstance(minimum, str) else value < minimum
            if too_small:
                raise Isol8Error(f"{json_name} {value} is below the smallest a sandbox can start with ({minimum})")
        for json_name, field, maximum in self._limits:
            value = getattr(request, field)
            if value is None:
                continue
            too_big = parse_size(value) > parse_size(maximum) if isinstance(value, str) else value > maximum
            if too_big:
                raise PolicyRefused(f"{json_name} {value} is above this server's maximum ({maximum})")

    def _network(self, options: ClientOptions) -> NetworkMode:
        default = self.config.defaults.network
        allowed = {*self.config.server.allowed_networks, default}
        if options.network is not None and options.network not in allowed:
            raise PolicyRefused(
                f'network "{options.network}" is not allowed by this server (allowed: {_listing(allowed)})'
            )
        return options.network or default

    def network_filter(self, asked: NetworkFilter | None) -> NetworkFilter:
        """The config's filter, only ever narrowed by the client's (a request's, or a session's
        new lists).

        The client may add blacklist entries (never drop the operator's), pick whitelist patterns
        within the operator's plus `server.allowedHosts` (any, when the operator's whitelist is empty
        and so allows every public host; an empty list keeps the operator's), and CONNECT ports within
        `network.ports` plus `server.allowedPorts`. A whitelist pattern of the client's own could name
        the Docker host, another container or 169.254.169.254, so such a whitelist reaches private
        addresses only if `server.clientWhitelistReachesPrivate` says so; patterns all taken from the
        operator's whitelist keep its `network.whitelistReachesPrivate`. What the client leaves out, or
        this method does not handle, is the operator's.
        """
        base, server = self.config.network, self.config.server
        if asked is None:
            return base
        if base.whitelist:
            allowed = {*base.whitelist, *server.allowed_hosts}
            for pattern in asked.whitelist:
                if pattern not in allowed:
                    raise PolicyRefused(
                        f'networkFilter.whitelist entry "{pattern}" is not allowed by this server '
                        f"(allowed: {_listing(allowed)})"
                    )
        if any(pattern not in base.whitelist for pattern in asked.whitelist):
            reaches, option = server.client_whitelist_reaches_private, "server.clientWhitelistReachesPrivate"
        else:
            reaches, option = base.whitelist_reaches_private, "network.whitelistReachesPrivate"
        if "whitelist_reaches_private" in asked.model_fields_set:
            if asked.whitelist_reaches_private and not reaches:
                raise PolicyRefused(
                    "networkFilter.whitelistReachesPrivate true is not allowed by this server "
                    f"({option} is false): a whitelist may not reach private, loopback or link-local addresses"
                )
            reaches = asked.whitelist_reaches_private
        ports = {HTTPS_PORT, *base.ports, *server.allowed_ports}
        for port in asked.ports:
            if port not in ports:
                raise PolicyRefused(
                    f"networkFilter.ports entry {port} is not allowed by this server "
                    f"(allowed: {', '.join(map(str, sorted(ports)))}; an operator adds ports with server.allowedPorts)"
                )
        return base.model_copy(
            update={
                "whitelist": asked.whitelist or base.whitelist,
                "blacklist": [*base.blacklist, *(p for p in asked.blacklist if p not in base.blacklist)],
                "ports": asked.ports if "ports" in asked.model_fields_set else base.ports,
                "whitelist_reaches_private": reaches,
            }
        )

    def _security(self, options: ClientOptions) -> SecurityOptions:
        base = self.config.security
        asked = options.security or ClientSecurity()
        seccomp = asked.seccomp or base.seccomp
        allowed = {*self.config.server.allowed_seccomp, base.seccomp}
        if seccomp not in allowed:
            raise PolicyRefused(
                f'security.seccomp "{seccomp}" is not allowed by this server (allowed: {_listing(allowed)})'
            )
        if asked.custom_profile_path not in (None, base.custom_profile_path):
            raise PolicyRefused("security.customProfilePath cannot be set by clients (the operator's config sets it)")
        if seccomp == "custom" and not base.custom_profile_path:
            raise PolicyRefused('security.seccomp "custom" needs security.customProfilePath in the server\'s config')
        runtimes = {*self.config.server.allowed_container_runtimes, *([base.runtime] if base.runtime else [])}
        if asked.runtime is not None and asked.runtime not in runtimes:
            raise PolicyRefused(
                f'security.runtime "{asked.runtime}" is not allowed by this server (allowed: {_listing(runtimes)})'
            )
        return SecurityOptions(
            seccomp=seccomp, custom_profile_path=base.custom_profile_path, runtime=asked.runtime or base.runtime
        )

    def _remote_code(self, options: ClientOptions) -> RemoteCodePolicy:
        """The config's `remoteCode`, only ever narrowed by the client's (the keys it sent).

        A client may turn fetching off (then nothing it sends can widen anything), keep a subset of
        the schemes and of the operator's `allowedHosts` (any hosts, when the operator's list is empty
        and so allows all; an empty list keeps the operator's), add `blockedHosts`, lower
        `maxCodeSize` and `fetchTimeoutMs`, and turn `requireHash` on.
        """
        base, asked = self.config.remote_code, options.remote_code
        if asked is None:
            return base
        sent = asked.model_fields_set
        if "enabled" in sent and not asked.enabled:
            return base.model_copy(update={"enabled": False})
        if not base.enabled:
            if "enabled" in sent:
                raise PolicyRefused(
                    "remoteCode.enabled true is not allowed by this server (its remoteCode.enabled is false)"
                )
            return base
        update: dict[str, Any] = {"require_hash": base.require_hash or asked.require_hash}
        if "allowed_schemes" in sent:
            _refuse_extra("remoteCode.allowedSchemes", asked.allowed_schemes, base.allowed_schemes)
            update["allowed_schemes"] = asked.allowed_schemes
        if asked.allowed_hosts:
            if base.allowed_hosts:
                _refuse_extra("remoteCode.allowedHosts", asked.allowed_hosts, base.allowed_hosts)
            update["allowed_hosts"] = asked.allowed_hosts
        if "blocked_hosts" in sent:
            update["blocked_hosts"] = [
                *base.blocked_hosts,
                *(p for p in asked.blocked_hosts if p not in base.blocked_hosts),
            ]
        for json_name, field in (("maxCodeSize", "max_code_size"), ("fetchTimeoutMs", "fetch_timeout_ms")):
            if field in sent:
                value, maximum = getattr(asked, field), getattr(base, field)
                if value > maximum:
                    raise PolicyRefused(f"remoteCode.{json_name} {value} is above this server's maximum ({maximum})")
                update[field] = value
        return base.model_copy(update=update)

    def _image(self, options: ClientOptions) -> str | None:
        allowed = set(self.config.server.allowed_images)
        if options.image is not None and options.image not in allowed:
            raise PolicyRefused(f'image "{options.image}" is not allowed by this server (allowed: {_listing(allowed)})')
        return options.image


def _refuse_extra(json_name: str, asked: list[str], allowed: list[str]) -> None:
    for value in asked:
        if value not in allowed:
            raise PolicyRefused(
                f'{json_name} entry "{value}" is not allowed by this server (allowed: {_listing(allowed)})'
            )


def _larger(first: str, second: str) -> str:
    return first if parse_size(first) >= parse_size(second) else second

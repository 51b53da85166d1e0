"""The isol8 configuration file: its schema, discovery and loading.

The file is validated strictly (unknown keys and wrong types are errors) because a silently ignored
setting in a security tool is worse than a refusal to start. Every default lives on the models below,
so a key the file leaves out takes exactly the value documented here. Only stdlib and pydantic are
imported so the engine stays usable without any UI package.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from engine.errors import ConfigError
from engine.limits import parse_size
from engine.models import (
    AuditOptions,
    Isol8Options,
    NetworkFilter,
    NetworkMode,
    Pattern,
    PoolStrategy,
    Port,
    RemoteCodePolicy,
    SeccompMode,
    SecurityOptions,
)
from engine.runtimes import RuntimeName

__all__ = [
    "CONFIG_FILE_NAME",
    "HOME_CONFIG_PATH",
    "Cleanup",
    "ConfigError",
    "Defaults",
    "Isol8Config",
    "LoadedConfig",
    "McpSettings",
    "NetworkFilter",
    "PrebuiltImage",
    "ServerPolicy",
    "candidate_paths",
    "load_config",
]

CONFIG_FILE_NAME = "isol8.config.json"
"""Name of the per-project config file looked up in the working directory."""

HOME_CONFIG_PATH = Path(".isol8") / "config.json"
"""Per-user config file, relative to the home directory."""


def _check_size(value: str) -> str:
    """Reject sizes Docker would refuse later, but keep the user's spelling for display and dumps."""
    try:
        parse_size(value)
    except ValueError:
        raise ValueError(f'{json.dumps(value)} is not a size (use e.g. "512m" or "1g")') from None
    return value


SizeStr = Annotated[str, AfterValidator(_check_size)]

_CLUSTER_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:]+\]:[0-9]{1,5}|auto")


def check_cluster_address(value: str) -> str:
    """A Ray address as `server.cluster` and `--cluster` take it; ValueError names the accepted forms."""
    if not _CLUSTER_ADDRESS.fullmatch(value):
        raise ValueError(f'{json.dumps(value)} is not a Ray address (e.g. "ray://head:10001", "head:6379", "auto")')
    return value


ClusterAddress = Annotated[str, AfterValidator(check_cluster_address)]


class _Model(BaseModel):
    """Shared settings: camelCase in JSON, snake_case in Python, and no silent coercion or extras."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
    )


def _engine_default(name: str) -> Any:
    """The engine's own default for option `name`: Isol8Options is the one place defaults are written."""
    return Isol8Options.model_fields[name].get_default(call_default_factory=True)


class Defaults(_Model):
    """Per-execution limits used whenever a request or CLI flag does not set its own."""

    timeout_ms: int = Field(_engine_default("timeout_ms"), gt=0)
    memory_limit: SizeStr = _engine_default("memory_limit")
    cpu_limit: float = Field(_engine_default("cpu_limit"), gt=0)
    pids_limit: int = Field(_engine_default("pids_limit"), gt=0)
    network: NetworkMode = _engine_default("network")
    sandbox_size: SizeStr = _engine_default("sandbox_size")
    tmp_size: SizeStr = _engine_default("tmp_size")
    max_output_size: int = Field(_engine_default("max_output_size"), gt=0)
    max_file_size: int = Field(_engine_default("max_file_size"), gt=0)
    """The most bytes read back from a sandbox: one get_file, or one execution's outputPaths together."""
    docker_network: str | None = _engine_default("docker_network")
    """Filtered mode: the Docker network sandboxes join (default: Docker's `bridge`)."""


class Cleanup(_Model):
    """How long idle isol8 containers may live before pruning."""

    auto_prune: bool = True
    max_container_age_ms: int = Field(3600000, ge=0)


class PrebuiltImage(_Model):
    """An image `isol8 setup` builds ahead of time so runs skip package installs."""

    tag: str
    runtime: RuntimeName
    install_packages: list[str] = Field(default_factory=list)
    setup_script: str | None = None


MAX_KEY_TTL_MS = 10 * 365 * 86_400_000
"""Ten years: longer lifetimes would overflow the key store's integers and dates."""


class ServerPolicy(_Model):
    """`isol8 serve`: what remote clients may ask for, and the server's own settings.

    A client's `options` can only pick what the operator listed here (or the config's own values,
    which are always allowed); anything more is refused with 403 naming the option, so a client can
    never loosen isolation the operator did not allow. Limits go up to the larger of `maxX` and
    `defaults.X`. `allowedHosts` are whitelist patterns a client may add in filtered mode, compared as
    strings (a regex cannot be checked for being narrower than another). `allowedPorts` are CONNECT
    ports a client may ask for besides the config's `network.ports`. A client's own whitelist never
    reaches private, loopback or link-local addresses (the Docker host, other containers, the cloud
    metadata address) unless `clientWhitelistReachesPrivate` says so: with an empty operator
    whitelist a client may name any host. Sessions are capped overall (`maxSessions`) and per tenant
    (`maxSessionsPerTenant`), so one key holder cannot take every slot; the smaller cap binds first
    (a tenant cap above `maxSessions` is not an error, so a default stays valid under a small one).
    """

    bind: str = "127.0.0.1"
    allowed_networks: list[NetworkMode] = Field(default_factory=lambda: list[NetworkMode](["none"]))
    allowed_hosts: list[Pattern] = Field(default_factory=list)
    allowed_ports: list[Port] = Field(default_factory=list)
    client_whitelist_reaches_private: bool = False
    allowed_seccomp: list[SeccompMode] = Field(default_factory=lambda: list[SeccompMode](["strict"]))
    allowed_images: list[str] = Field(default_factory=list)
    allowed_container_runtimes: list[str] = Field(default_factory=list)
    max_timeout_ms: int = Field(300_000, gt=0)
    max_memory_limit: SizeStr = "2g"
    max_cpu_limit: float = Field(2.0, gt=0)
    max_pids_limit: int = Field(256, gt=0)
    max_sandbox_size: SizeStr = "2g"
    max_tmp_size: SizeStr = "1g"
    max_output_size: int = Field(16 << 20, gt=0)
    max_sessions: int = Field(100, ge=0)
    max_sessions_per_tenant: int = Field(20, ge=0)
    auth_db: str | None = None
    key_ttl_ms: int = Field(86_400_000, gt=0, le=MAX_KEY_TTL_MS)
    # Files and stdin travel base64 in JSON (4/3 of their size), so this leaves room for 64 MiB of
    # stdin plus files; a larger body is refused with 413 before it is read.
    max_body_bytes: int = Field(256 << 20, gt=0)
    # Operating the server (README "Operating isol8"): `/metrics` without a key, and where traces go.
    metrics_public: bool = False
    otlp_endpoint: str | None = Field(None, pattern=r"^https?://\S+$")
    # A Ray cluster to run on instead of this machine's Docker (engine/cluster.py): `ray://head:10001`,
    # `head:6379`, or `auto` (this machine is a node of it). `isol8 serve --cluster` overrides it.
    cluster: ClusterAddress | None = None


McpTool = Literal[
    "run_code",
    "run_command",
    "create_session",
    "close_session",
    "reset_session",
    "list_sessions",
    "write_file",
    "read_file",
    "list_files",
    "network_log",
]
"""The MCP server's tools (engine/mcp/tools.py registers one function per name)."""
MCP_TOOLS: tuple[McpTool, ...] = get_args(McpTool)


class McpSettings(_Model):
    """The MCP server (`isol8 mcp` over stdio, `/mcp` in `isol8 serve`): what a tool call gets when it
    leaves an argument out, how much a file tool returns, and which tools exist at all.

    Tool arguments go through the `server` section's policy exactly like a REST client's options, and
    so do these defaults: a default above the policy's ceiling is refused at the call.
    """

    runtime: RuntimeName = "python"
    network: NetworkMode = _engine_default("network")
    timeout_ms: int = Field(_engine_default("timeout_ms"), gt=0)
    memory_limit: SizeStr = _engine_default("memory_limit")
    max_output_size: int = Field(_engine_default("max_output_size"), gt=0)
    max_read_bytes: int = Field(1 << 20, gt=0)
    """The most bytes `read_file` returns (a larger file is cut, and says so)."""
    max_list_entries: int = Field(1000, gt=0)
    """The most entries `list_files` returns."""
    tools: list[McpTool] = Field(default_factory=lambda: list(MCP_TOOLS))
    """The tools the server exposes; leave one out and clients never see it."""


TUI_ACTIONS: tuple[str, ...] = (
    "quit",
    "help",
    "run",
    "stop",
    "save",
    "open",
    "new-session",
    "delete-session",
    "scratch",
    "toggle-sidebar",
    "clear-output",
    "toggle-keep-output",
    "upload",
    "download",
    "refresh-files",
    "focus-sessions",
    "focus-editor",
    "focus-output",
    "focus-network",
    "focus-files",
    "jump",
    "save-as",
    "search-output",
    "next-match",
    "previous-match",
    "next-error",
    "save-output",
    "allow-host",
    "export-har",
    "session-settings",
    "run-interactive",
    "reset-session",
    "save-result",
)
"""Binding ids of the workbench (`isol8 tui`) that `tui.keymap` may rebind; the app's tests keep them in sync."""

_KEY = re.compile(r"[a-z0-9_]+(\+[a-z0-9_]+)*")


class TuiSettings(_Model):
    """The workbench (`isol8 tui`): how it watches files, how much output it keeps, its look and keys."""

    watch_debounce_ms: int = Field(100, ge=10, le=10000)
    """Quiet time after a change on disk before the file is reloaded and re-run."""
    scrollback_lines: int = Field(10000, ge=100, le=1000000)
    """Lines each output pane keeps; older lines are dropped so long runs stay fast."""
    clear_output_on_run: bool = True
    """Clear the output panes when a run starts (otherwise each run is appended under a separator)."""
    theme: str = Field("isol8", pattern=r"^[a-z0-9][a-z0-9-]*$")
    """A Textual theme name (e.g. isol8, textual-dark, nord, gruvbox, textual-light)."""
    keymap: dict[str, str] = Field(default_factory=dict)
    """Key overrides: action id -> comma-separated keys, e.g. {"run": "ctrl+j,f5"}."""
    images: bool = True
    """Show image results as images where the terminal can (sixel, kitty graphics, else coloured half
    cells); false: a line naming each image (type, pixel size, bytes), which can be saved to a file."""

    @field_validator("keymap")
    @classmethod
    def _known_actions(cls, keymap: dict[str, str]) -> dict[str, str]:
        for action, keys in keymap.items():
            if action not in TUI_ACTIONS:
                close = difflib.get_close_matches(action, TUI_ACTIONS, n=1)
                hint = f" (did you mean {json.dumps(close[0])}?)" if close else ""
                raise ValueError(f"unknown action {json.dumps(action)}{hint}; known: {', '.join(TUI_ACTIONS)}")
            parts = [part.strip() for part in keys.split(",")]
            if not all(_KEY.fullmatch(part) for part in parts):
                raise ValueError(
                    f'{json.dumps(keys)} for {json.dumps(action)} is not a key list (use e.g. "ctrl+r" or "f5,ctrl+j")'
                )
        return {action: ",".join(part.strip() for part in keys.split(",")) for action, keys in keymap.items()}


class Isol8Config(_Model):
    """The whole configuration; `Isol8Config()` is the built-in defaults."""

    schema_: str | None = Field(None, alias="$schema")
    debug: bool = _engine_default("debug")
    max_concurrent: int = Field(_engine_default("max_concurrent"), ge=1)
    defaults: Defaults = Field(default_factory=Defaults)
    network: NetworkFilter = Field(default_factory=NetworkFilter)
    cleanup: Cleanup = Field(default_factory=Cleanup)
    pool_strategy: PoolStrategy = _engine_default("pool_strategy")
    pool_size: int = Field(_engine_default("pool_size"), ge=0)
    prewarm: list[RuntimeName] = Field(default_factory=list)
    security: SecurityOptions = Field(default_factory=SecurityOptions)
    remote_code: RemoteCodePolicy = Field(default_factory=RemoteCodePolicy)
    audit: AuditOptions = Field(default_factory=AuditOptions)
    prebuilt_images: list[PrebuiltImage] = Field(default_factory=list)
    server: ServerPolicy = Field(default_factory=ServerPolicy)  # `isol8 serve`
    tui: TuiSettings = Field(default_factory=TuiSettings)  # the workbench, `isol8 tui`
    mcp: McpSettings = Field(default_factory=McpSettings)  # `isol8 mcp` and `/mcp` in `isol8 serve`

    def engine_options(self, **overrides: Any) -> Isol8Options:
        """Engine options from this config; `overrides` (e.g. CLI flags) win over the file."""
        values: dict[str, Any] = {name: getattr(self.defaults, name) for name in Defaults.model_fields}
        values.update({name: getattr(self, name) for name in _ENGINE_SETTINGS})
        values.update(network_filter=self.network)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return Isol8Options(**values)


_ENGINE_SETTINGS = (
    "security",
    "max_concurrent",
    "pool_strategy",
    "pool_size",
    "prewarm",
    "remote_code",
    "audit",
    "debug",
)
"""Top-level config keys that are engine options of the same name (`defaults` holds the rest)."""


@dataclass(frozen=True)
class LoadedConfig:
    """The effective config plus where it came from, so the CLI can explain each value."""

    config: Isol8Config
    source: Path | None
    explicit: frozenset[str]

    def origin(self, key: str) -> Literal["file", "default"]:
        """`file` if the config file set the dotted camelCase `key`, else `default`."""
        return "file" if key in self.explicit else "default"


def candidate_paths(cwd: Path | None = None) -> list[Path]:
    """Config files in search order; the first that exists is used and the others are ignored."""
    paths = [(cwd or Path.cwd()) / CONFIG_FILE_NAME]
    # No HOME and no passwd entry: only the project file can apply.
    with contextlib.suppress(RuntimeError):
        paths.append(Path.home() / HOME_CONFIG_PATH)
    return paths


def load_config(cwd: Path | None = None) -> LoadedConfig:
    """Find, parse and validate the config file; without one, the defaults apply."""
    for path in candidate_paths(cwd):
        if path.exists():
            return _load_file(path)
    return LoadedConfig(config=Isol8Config(), source=None, explicit=frozenset())


def _load_file(path: Path) -> LoadedConfig:
    prefix = f"Invalid config {path}"
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"{prefix}: cannot read the file ({reason}). Check that it is a readable file.", path
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{prefix}: not valid UTF-8 ({exc.reason}). Save it as UTF-8.", path) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{prefix}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). Fix the syntax.",
            path,
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{prefix}: the top level is a JSON {_json_type(data)}, not an object. Put the settings inside {{ ... }}.",
            path,
        )
    try:
        # by_name=False: the file must use the documented camelCase keys, not Python attribute names.
        config = Isol8Config.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ConfigError(f"{prefix}: {_describe(exc)}", path) from exc
    return LoadedConfig(config=config, source=path, explicit=frozenset(_leaf_keys(data)))


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys the file set; sections recurse, lists and scalars count as one key."""
    keys: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            keys.extend(_leaf_keys(value, f"{dotted}."))
        else:
            keys.append(dotted)
    return keys


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """camelCase keys allowed in the section that `loc` points into, for "did you mean" hints."""
    model: type[BaseModel] = Isol8Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            break
        inner = field.annotation
        args = getattr(inner, "__args__", ())
        candidates = [inner, *args]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe(exc: ValidationError) -> str:
    """Fold pydantic's errors into one line; unknown keys get their own wording and advice."""
    unknown: list[str] = []
    invalid: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            name = json.dumps(_dotted(loc))
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc[:-1]), n=1)
            unknown.append(f"{name} (did you mean {json.dumps(close[0])}?)" if close else name)
        else:
            msg = err["msg"].removeprefix("Value error, ").rstrip(".")
            invalid.append(f"{_dotted(loc)}: {msg}")
    parts: list[str] = []
    if unknown:
        parts.append(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    parts.extend(invalid)
    detail = "; ".join(parts)
    if unknown and invalid:
        advice = "Remove the unknown keys and fix the values; see `isol8 config --json` for the known keys."
    elif unknown:
        advice = f"Remove {'them' if len(unknown) > 1 else 'it'}; see `isol8 config --json` for the known keys."
    elif len(invalid) > 1:
        advice = "Fix the values or remove the keys."
    else:
        advice = "Fix the value or remove the key."
    return f"{detail}. {advice}"


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"

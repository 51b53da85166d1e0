"""The server's config section, its policy over client options, and the API-key store (no Docker)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine.config import ConfigError, Isol8Config, ServerPolicy, load_config
from engine.errors import AuthError, Isol8Error, NotStateful
from engine.models import ExecutionRequest, NetworkFilter
from engine.server.app import create_app
from engine.server.auth import KEY_PREFIX, Authenticator, SqliteKeyStore, digest, open_store, redact
from engine.server.policy import ClientOptions, Policy, PolicyRefused
from engine.server.state import ServerSettings


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the developer's real ~/.isol8/config.json out of every test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    return home


def config_from(tmp_path: Path, data: dict[str, Any]) -> Isol8Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "isol8.config.json").write_text(json.dumps(data))
    return load_config(tmp_path).config


def plan(config: Isol8Config, options: dict[str, Any] | None = None, **request: Any) -> Any:
    body = ExecutionRequest.model_validate({"code": "1", **request})
    return Policy(config).plan(body, ClientOptions.model_validate(options) if options is not None else None)


def refusal(config: Isol8Config, options: dict[str, Any], **request: Any) -> str:
    with pytest.raises(PolicyRefused) as refused:
        plan(config, options, **request)
    return str(refused.value)


# --- the `server` config section ---------------------------------------------------------------------------
def test_server_defaults_are_closed() -> None:
    server = Isol8Config().server
    assert server == ServerPolicy()
    assert (server.bind, server.allowed_networks, server.allowed_seccomp) == ("127.0.0.1", ["none"], ["strict"])
    assert (server.allowed_images, server.allowed_hosts, server.allowed_container_runtimes) == ([], [], [])
    assert (server.max_timeout_ms, server.max_memory_limit, server.max_sessions) == (300_000, "2g", 100)
    assert (server.max_sessions_per_tenant, server.allowed_ports, server.client_whitelist_reaches_private) == (
        20,
        [],
        False,
    )
    assert server.auth_db is None


def test_server_section_is_read_from_the_file(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        {"server": {"allowedNetworks": ["none", "filtered"], "allowedHosts": ["pypi\\.org"], "maxMemoryLimit": "4g"}},
    )
    assert config.server.allowed_networks == ["none", "filtered"]
    assert config.server.allowed_hosts == ["pypi\\.org"]
    assert config.server.max_memory_limit == "4g"
    # Not in dumps yet: `isol8 config` lists only the sections it knows.
    assert config.model_dump(by_alias=True)["server"]["allowedNetworks"] == config.server.allowed_networks


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"server": {"allowedNetwork": ["host"]}},
            'unknown key "server.allowedNetwork" (did you mean "allowedNetworks"?)',
        ),
        (
            {"server": {"allowedNetworks": ["wide"]}},
            "server.allowedNetworks[0]: Input should be 'none', 'host' or 'filtered'",
        ),
        (
            {"server": {"allowedSeccomp": ["off"]}},
            "server.allowedSeccomp[0]: Input should be 'strict', 'unconfined' or 'custom'",
        ),
        (
            {"server": {"maxMemoryLimit": "lots"}},
            'server.maxMemoryLimit: "lots" is not a size (use e.g. "512m" or "1g")',
        ),
        ({"server": {"allowedHosts": ["("]}}, 'server.allowedHosts[0]: "(" is not a valid regular expression'),
        ({"server": {"maxSessions": -1}}, "server.maxSessions: Input should be greater than or equal to 0"),
        (
            {"server": {"maxSessionsPerTenant": -1}},
            "server.maxSessionsPerTenant: Input should be greater than or equal to 0",
        ),
        ({"server": {"allowedPorts": [0]}}, "server.allowedPorts[0]: Input should be greater than or equal to 1"),
        ({"server": {"allowedPorts": [65536]}}, "server.allowedPorts[0]: Input should be less than or equal to 65535"),
        ({"server": {"allowedPorts": ["22"]}}, "server.allowedPorts[0]: Input should be a valid integer"),
        (
            {"server": {"clientWhitelistReachesPrivate": "yes"}},
            "server.clientWhitelistReachesPrivate: Input should be a valid boolean",
        ),
    ],
)
def test_server_section_errors_name_the_key(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    (tmp_path / "isol8.config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


# --- policy ------------------------------------------------------------------------------------------------
def test_no_options_means_the_operators_config(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        {
            "defaults": {"timeoutMs": 5000, "memoryLimit": "256m", "network": "filtered"},
            "network": {"whitelist": ["pypi\\.org"], "blacklist": ["evil\\.com"]},
            "security": {"seccomp": "strict"},
        },
    )
    result = plan(config)
    assert result.engine_options == config.engine_options()
    assert result.engine_options.network == "filtered"
    assert result.engine_options.network_filter == NetworkFilter(whitelist=["pypi\\.org"], blacklist=["evil\\.com"])
    assert result.engine_options.timeout_ms == 5000
    assert result.request.memory_limit is None  # the engine's own default (256m) applies


def test_the_configured_default_network_is_always_allowed(tmp_path: Path) -> None:
    config = config_from(tmp_path, {"defaults": {"network": "filtered"}})
    assert plan(config, {"network": "filtered"}).engine_options.network == "filtered"
    assert (
        refusal(config, {"network": "host"}) == 'network "host" is not allowed by this server (allowed: filtered, none)'
    )


def test_clients_narrow_the_filter_or_add_allowed_hosts_only(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        {
            "defaults": {"network": "filtered"},
            "network": {"whitelist": ["pypi\\.org", "files\\.pythonhosted\\.org"], "blacklist": ["bad\\.org"]},
            "server": {"allowedHosts": ["registry\\.npmjs\\.org"]},
        },
    )
    narrowed = plan(config, {"networkFilter": {"whitelist": ["pypi\\.org"], "blacklist": ["worse\\.org"]}})
    assert narrowed.engine_options.network_filter == NetworkFilter(
        whitelist=["pypi\\.org"], blacklist=["bad\\.org", "worse\\.org"]
    )
    added = plan(config, {"networkFilter": {"whitelist": ["registry\\.npmjs\\.org"]}})
    assert added.engine_options.network_filter.whitelist == ["registry\\.npmjs\\.org"]
    assert added.engine_options.network_filter.blacklist == ["bad\\.org"]  # cannot be dropped
    only_blacklist = plan(config, {"networkFilter": {"blacklist": []}})
    assert only_blacklist.engine_options.network_filter.whitelist == ["pypi\\.org", "files\\.pythonhosted\\.org"]
    assert refusal(config, {"networkFilter": {"whitelist": [".*"]}}) == (
        'networkFilter.whitelist entry ".*" is not allowed by this server '
        "(allowed: files\\.pythonhosted\\.org, pypi\\.org, registry\\.npmjs\\.org)"
    )


def test_an_open_filter_can_only_be_narrowed(tmp_path: Path) -> None:
    config = config_from(tmp_path, {"defaults": {"network": "filtered"}})
    narrowed = plan(config, {"networkFilter": {"whitelist": ["example\\.com"]}})
    assert narrowed.engine_options.network_filter.whitelist == ["example\\.com"]


def test_a_tenant_cap_above_the_servers_is_not_an_error(tmp_path: Path) -> None:
    """The server's cap binds first; refusing would break a dumped config with a small maxSessions."""
    config = config_from(tmp_path, {"server": {"maxSessions": 3}})
    assert config.server.max_sessions_per_tenant == 20
    dumped = config.model_dump(by_alias=True, mode="json")
    assert config_from(tmp_path / "again", dumped) == config


@pytest.mark.parametrize(
    "whitelist",
    [[".*"], ["172\\.17\\..*"], ["169\\.254\\.169\\.254"], ["10\\.0\\.0\\.1", "example\\.com"]],
)
def test_a_clients_own_whitelist_never_reaches_private_addresses_unless_allowed(
    tmp_path: Path, whitelist: list[str]
) -> None:
    """With an open operator whitelist any client list is accepted, but none may lift the proxy's
    refusal of private, loopback and link-local destinations (the Docker host, other containers,
    the metadata address) unless `server.clientWhitelistReachesPrivate` says so."""
    config = config_from(tmp_path / "closed", {"defaults": {"network": "filtered"}})
    filtered = plan(config, {"networkFilter": {"whitelist": whitelist}}).engine_options.network_filter
    assert (filtered.whitelist, filtered.whitelist_reaches_private) == (whitelist, False)
    asked = {"networkFilter": {"whitelist": whitelist, "whitelistReachesPrivate": True}}
    assert refusal(config, asked) == (
        "networkFilter.whitelistReachesPrivate true is not allowed by this server "
        "(server.clientWhitelistReachesPrivate is false): a whitelist may not reach private, loopback or "
        "link-local addresses"
    )
    opened = config_from(tmp_path / "open", {"server": {"clientWhitelistReachesPrivate": True}})
    assert plan(opened, asked).engine_options.network_filter.whitelist_reaches_private is True
    assert plan(opened, {"networkFilter": {"whitelist": whitelist}}).engine_options.network_filter == NetworkFilter(
        whitelist=whitelist, whitelist_reaches_private=True
    )
    narrower = {"networkFilter": {"whitelist": whitelist, "whitelistReachesPrivate": False}}
    assert plan(opened, narrower).engine_options.network_filter.whitelist_reaches_private is False


def test_the_operators_own_whitelist_keeps_its_private_setting(tmp_path: Path) -> None:
    """Patterns all taken from `network.whitelist` are the operator's: its `whitelistReachesPrivate`
    holds (narrowing cannot widen); one of `server.allowedHosts` is the client's choice."""
    config = config_from(
        tmp_path,
        {
            "network": {"whitelist": ["db\\.internal", "api\\.internal"], "whitelistReachesPrivate": True},
            "server": {"allowedHosts": ["other\\.internal"]},
        },
    )
    assert plan(config).engine_options.network_filter.whitelist_reaches_private is True
    subset = plan(config, {"networkFilter": {"whitelist": ["db\\.internal"]}}).engine_options.network_filter
    assert (subset.whitelist, subset.whitelist_reaches_private) == (["db\\.internal"], True)
    added = plan(config, {"networkFilter": {"whitelist": ["other\\.internal"]}}).engine_options.network_filter
    assert added.whitelist_reaches_private is False
    closed = config_from(tmp_path / "closed", {"network": {"whitelistReachesPrivate": False}})
    assert refusal(closed, {"networkFilter": {"whitelistReachesPrivate": True}}) == (
        "networkFilter.whitelistReachesPrivate true is not allowed by this server "
        "(network.whitelistReachesPrivate is false): a whitelist may not reach private, loopback or "
        "link-local addresses"
    )


def test_client_ports_only_within_the_operators(tmp_path: Path) -> None:
    config = config_from(tmp_path, {"network": {"ports": [8443]}, "server": {"allowedPorts": [9000]}})
    assert plan(config).engine_options.network_filter.ports == [8443]
    assert plan(config, {"networkFilter": {}}).engine_options.network_filter.ports == [8443]
    assert plan(config, {"networkFilter": {"ports": [9000, 443]}}).engine_options.network_filter.ports == [9000, 443]
    assert plan(config, {"networkFilter": {"ports": []}}).engine_options.network_filter.ports == []  # 443 only
    for port in (22, 2375, 8080, 65535):
        assert refusal(config, {"networkFilter": {"ports": [9000, port]}}) == (
            f"networkFilter.ports entry {port} is not allowed by this server "
            "(allowed: 443, 8443, 9000; an operator adds ports with server.allowedPorts)"
        )


def test_a_client_filter_cannot_drop_or_empty_the_operators_lists(tmp_path: Path) -> None:
    config = config_from(tmp_path, {"network": {"whitelist": ["a\\.org"], "blacklist": ["b\\.org", "c\\.org"]}})
    for asked in ({"blacklist": []}, {"blacklist": ["c\\.org"]}, {"whitelist": []}, {"whitelist": [], "blacklist": []}):
        result = plan(config, {"networkFilter": asked}).engine_options.network_filter
        assert (result.whitelist, result.blacklist) == (["a\\.org"], ["b\\.org", "c\\.org"]), asked


def test_limits_go_up_to_the_larger_of_the_maximum_and_the_default(tmp_path: Path) -> None:
    config = config_from(tmp_path, {"defaults": {"memoryLimit": "3g", "timeoutMs": 400000}})
    assert plan(config, {"memoryLimit": "3g"}).request.memory_limit == "3g"
    assert refusal(config, {"memoryLimit": "3073m"}) == "memoryLimit 3073m is above this server's maximum (3g)"
    assert plan(config, timeoutMs=400000).request.timeout_ms == 400000
    assert refusal(config, {}, tmpSize="2g") == "tmpSize 2g is above this server's maximum (1g)"
    assert (
        refusal(config, {"maxOutputSize": 1 << 30})
        == "maxOutputSize 1073741824 is above this server's maximum (16777216)"
    )


def test_option_limits_fold_into_the_request_and_the_request_wins(tmp_path: Path) -> None:
    config = config_from(tmp_path, {})
    result = plan(config, {"memoryLimit": "256m", "pidsLimit": 32, "timeoutMs": 2000, "secrets": {"A": "1", "B": "2"}},
                  memoryLimit="128m", secrets={"B": "3"})  # fmt: skip
    assert (result.request.memory_limit, result.request.pids_limit, result.request.timeout_ms) == ("128m", 32, 2000)
    assert result.request.secrets == {"A": "1", "B": "3"}
    session = result.session_options()
    assert (session.mode, session.runtime, session.memory_limit, session.pids_limit) == (
        "persistent",
        "python",
        "128m",
        32,
    )


def test_security_options(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text("{}")
    config = config_from(
        tmp_path,
        {
            "security": {"seccomp": "strict", "customProfilePath": str(profile)},
            "server": {"allowedSeccomp": ["strict", "custom"], "allowedContainerRuntimes": ["runsc"]},
        },
    )
    custom = plan(config, {"security": {"seccomp": "custom", "runtime": "runsc"}}).engine_options.security
    assert (custom.seccomp, custom.custom_profile_path, custom.runtime) == ("custom", str(profile), "runsc")
    assert refusal(config, {"security": {"seccomp": "unconfined"}}) == (
        'security.seccomp "unconfined" is not allowed by this server (allowed: custom, strict)'
    )
    assert refusal(config, {"security": {"customProfilePath": "/etc/other.json"}}) == (
        "security.customProfilePath cannot be set by clients (the operator's config sets it)"
    )
    no_profile = config_from(tmp_path, {"server": {"allowedSeccomp": ["custom"]}})
    assert refusal(no_profile, {"security": {"seccomp": "custom"}}) == (
        'security.seccomp "custom" needs security.customProfilePath in the server\'s config'
    )


def test_images_only_from_the_allowed_list(tmp_path: Path) -> None:
    config = config_from(tmp_path, {"server": {"allowedImages": ["isol8-custom:python-numpy"]}})
    assert plan(config, {"image": "isol8-custom:python-numpy"}).engine_options.image == "isol8-custom:python-numpy"
    assert (
        refusal(config, {"image": "ubuntu"})
        == 'image "ubuntu" is not allowed by this server (allowed: isol8-custom:python-numpy)'
    )


REMOTE_CODE = {
    "remoteCode": {
        "enabled": True,
        "allowedSchemes": ["https", "http"],
        "allowedHosts": [r"^raw\.githubusercontent\.com$", r"^gist\.githubusercontent\.com$"],
        "blockedHosts": ["^evil"],
        "maxCodeSize": 1000,
        "fetchTimeoutMs": 5000,
    }
}


def remote_code(config: Isol8Config, asked: dict[str, Any]) -> Any:
    return plan(config, {"remoteCode": asked}).engine_options.remote_code


def test_the_operators_remote_code_policy_applies_when_the_client_sends_none(tmp_path: Path) -> None:
    config = config_from(tmp_path, REMOTE_CODE)
    assert plan(config).engine_options.remote_code == config.remote_code
    assert not plan(Isol8Config()).engine_options.remote_code.enabled


def test_clients_narrow_the_remote_code_policy(tmp_path: Path) -> None:
    config = config_from(tmp_path, REMOTE_CODE)
    narrowed = remote_code(
        config,
        {
            "allowedSchemes": ["https"],
            "allowedHosts": [r"^gist\.githubusercontent\.com$"],
            "blockedHosts": ["^bad"],
            "maxCodeSize": 10,
            "fetchTimeoutMs": 100,
            "requireHash": True,
        },
    )
    assert (narrowed.enabled, narrowed.allowed_schemes, narrowed.allowed_hosts) == (
        True,
        ["https"],
        [r"^gist\.githubusercontent\.com$"],
    )
    assert (narrowed.blocked_hosts, narrowed.max_code_size, narrowed.fetch_timeout_ms) == (["^evil", "^bad"], 10, 100)
    assert narrowed.require_hash
    # What a reference client sends by default (its own defaults) keeps what it leaves out, or says
    # nothing: an empty allowedHosts keeps the operator's, requireHash false keeps the operator's.
    kept = remote_code(config, {"allowedHosts": [], "requireHash": False})
    assert kept == config.remote_code
    assert not remote_code(config, {"enabled": False}).enabled


def test_a_client_that_turns_remote_code_off_may_send_anything_else(tmp_path: Path) -> None:
    """The reference's clients send their whole default policy (enabled false) on every request."""
    config = config_from(tmp_path, REMOTE_CODE)
    defaults = {"enabled": False, "allowedSchemes": ["https", "ftp"], "maxCodeSize": 10 << 20, "fetchTimeoutMs": 30000}
    assert not remote_code(config, defaults).enabled
    assert not remote_code(Isol8Config(), defaults).enabled


@pytest.mark.parametrize(
    ("config_data", "asked", "message"),
    [
        ({}, {"enabled": True}, "remoteCode.enabled true is not allowed by this server"),
        (REMOTE_CODE, {"allowedSchemes": ["ftp"]}, 'remoteCode.allowedSchemes entry "ftp" is not allowed'),
        (REMOTE_CODE, {"allowedHosts": ["^example"]}, 'remoteCode.allowedHosts entry "^example" is not allowed'),
        (REMOTE_CODE, {"maxCodeSize": 1001}, "remoteCode.maxCodeSize 1001 is above this server's maximum (1000)"),
        (REMOTE_CODE, {"fetchTimeoutMs": 5001}, "remoteCode.fetchTimeoutMs 5001 is above this server's maximum (5000)"),
    ],
)
def test_clients_cannot_widen_the_remote_code_policy(
    tmp_path: Path, config_data: dict[str, Any], asked: dict[str, Any], message: str
) -> None:
    assert refusal(config_from(tmp_path, config_data), {"remoteCode": asked}).startswith(message)


def test_an_open_host_list_takes_any_client_hosts(tmp_path: Path) -> None:
    config = config_from(tmp_path, {"remoteCode": {"enabled": True}})
    assert remote_code(config, {"allowedHosts": ["^example\\.com$"]}).allowed_hosts == ["^example\\.com$"]
    assert remote_code(config, {"blockedHosts": []}).blocked_hosts == config.remote_code.blocked_hosts


def test_unknown_client_options_are_errors_not_silently_dropped() -> None:
    with pytest.raises(ValueError, match="remoteCodes"):
        ClientOptions.model_validate({"remoteCodes": {"enabled": True}})


# --- the key store and the authenticator -------------------------------------------------------------------
def test_keys_are_stored_as_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "keys.db"
    store = open_store(str(path))
    created = store.create_key("ci", "team-a", ttl_ms=60_000)
    store.close()
    assert created.key.startswith(KEY_PREFIX) and len(created.key) == len(KEY_PREFIX) + 64
    assert created.key_prefix == created.key[:10] + "..."
    raw = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert created.key.encode() not in raw
    assert created.key[len(KEY_PREFIX) :].encode() not in raw
    rows = sqlite3.connect(path).execute("SELECT key_hash, tenant_id FROM api_keys").fetchall()
    assert rows == [(digest(created.key), "team-a")]
    assert path.stat().st_mode & 0o777 == 0o600


def test_key_lifecycle(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.db")
    first = store.create_key("first", "default", ttl_ms=60_000)
    time.sleep(0.01)
    store.create_key("second", "other", ttl_ms=60_000)
    assert [k.name for k in store.list_keys()] == ["second", "first"]  # newest first
    assert [k.name for k in store.list_keys("other")] == ["second"]
    info = store.validate(first.key)
    assert info is not None and (info.id, info.tenant_id) == (first.id, "default")
    assert store.list_keys("default")[0].last_used_at is not None
    assert store.validate(first.key[:-1] + ("0" if first.key[-1] != "0" else "1")) is None
    assert store.validate("isol8_short") is None
    assert store.revoke_key(first.id) is True
    assert store.revoke_key("no-such-id") is False
    assert store.validate(first.key) is None
    short = store.create_key("short", "default", ttl_ms=1)
    time.sleep(0.01)
    assert store.validate(short.key) is None  # expired
    assert store.purge() == 2  # the revoked and the expired one
    assert [k.name for k in store.list_keys()] == ["second"]
    store.close()


async def test_authenticator(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.db")
    auth = Authenticator("master-secret", store)
    assert (await auth.authenticate("Bearer master-secret")).is_master
    key = store.create_key("k", "t1", ttl_ms=60_000).key
    principal = await auth.authenticate(f"Bearer {key}")
    assert (principal.kind, principal.tenant_id) == ("apikey", "t1")
    for header, status, message in (
        (None, 401, "Missing Authorization header"),
        ("", 401, "Missing Authorization header"),
        ("master-secret", 401, 'Authorization header must be "Bearer <key>"'),
        ("Basic master-secret", 401, 'Authorization header must be "Bearer <key>"'),
        ("Bearer ", 401, 'Authorization header must be "Bearer <key>"'),
        ("Bearer master-secreT", 403, "Invalid API key"),
        (f"Bearer {key}x", 403, "Invalid API key"),
    ):
        with pytest.raises(AuthError) as refused:
            await auth.authenticate(header)
        assert (refused.value.status, refused.value.message) == (status, message)
    store.close()


def test_store_backends_and_redaction(tmp_path: Path) -> None:
    from engine.errors import Isol8Error

    assert isinstance(open_store(f"sqlite://{tmp_path / 'a.db'}"), SqliteKeyStore)
    with pytest.raises(Isol8Error, match=r'Unsupported auth DB "mysql://"'):
        open_store("mysql://u:p@localhost/db")
    assert redact("postgresql://isol8:hunter2@db.internal:5432/keys") == "postgresql://isol8:***@db.internal:5432/keys"
    assert redact("/var/lib/isol8/auth.db") == "/var/lib/isol8/auth.db"


# --- stateful sessions ---------------------------------------------------------------------------------------
def test_stateful_is_fixed_when_a_session_is_created() -> None:
    config = Isol8Config()
    asked = plan(config, {"stateful": True})
    assert asked.session_options().stateful is True and asked.session_options().mode == "persistent"
    assert asked.engine_options.stateful is False  # the shared (ephemeral) engines never are
    assert plan(config).session_options().stateful is False
    stateful_session = asked.session_options()
    plain_session = plan(config).session_options()
    plan(config).check_session(stateful_session)  # not asked: the session is used as it is
    asked.check_session(stateful_session)
    with pytest.raises(NotStateful, match="created without stateful"):
        asked.check_session(plain_session)
    with pytest.raises(Isol8Error, match="This session is stateful"):
        plan(config, {"stateful": False}).check_session(stateful_session)
    with pytest.raises(ValidationError):
        ClientOptions.model_validate({"stateful": "yes"}, strict=True)


def test_openapi_documents_stream_events_and_rich_results() -> None:
    document = create_app(ServerSettings(Isol8Config(), "unused-key-0123456789")).openapi()
    schemas = document["components"]["schemas"]
    event = schemas["StreamEvent"]
    assert "result" in event["properties"]["type"]["enum"]
    assert {"result", "state"} <= set(event["properties"])
    assert {"data", "isMainResult"} == set(schemas["RichResult"]["properties"])
    assert "base64" in schemas["RichResult"]["properties"]["data"]["description"]
    assert {"results", "state"} <= set(schemas["ExecutionResult"]["properties"])
    assert schemas["SessionInfo"]["properties"]["stateful"]["type"] == "boolean"
    stream = document["paths"]["/execute/stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert stream == {"x-event": {"$ref": "#/components/schemas/StreamEvent"}}
    reset = document["paths"]["/session/{session_id}/reset"]["post"]
    assert reset["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OkBody"}
    assert "stateful" in schemas["ClientOptions"]["properties"]

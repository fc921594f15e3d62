"""Settings: flag over environment over TOML file over default, and one line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver_service.server.config import ConfigError, ServerSettings, load_settings

NO_FLAGS: dict[str, object] = {}


def test_defaults_follow_the_seed_and_refuse_to_run_without_tls() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(NO_FLAGS, {})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "--tls-cert" in lines[0]
    assert "--token-secret-file" in lines[1]
    settings = ServerSettings()
    assert settings.listen == "0.0.0.0:50051"
    assert (settings.keepalive_time, settings.keepalive_timeout) == (300.0, 1.0)
    assert (settings.max_connection_idle, settings.max_connection_age) == (900.0, 1800.0)
    assert (settings.max_connection_age_grace, settings.keepalive_min_time) == (5.0, 5.0)
    assert settings.keepalive_permit_without_stream is True


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'insecure = true\nlisten = "127.0.0.1:1"\nlog-level = "debug"\n'
        "max_message_bytes = 2048\nrate_limit = 7\n"
    )
    env = {"DRIVER_SERVICE_LISTEN": "127.0.0.1:2", "DRIVER_SERVICE_RATE_LIMIT": "9"}
    settings = load_settings({"rate_limit": "11"}, env, config)
    assert settings.listen == "127.0.0.1:2"  # env over file
    assert settings.rate_limit == 11.0  # flag over env
    assert settings.max_message_bytes == 2048  # file over default
    assert settings.log_level == "DEBUG"
    assert settings.shutdown_grace == 10.0  # default


def test_every_mistake_is_reported_at_once_naming_its_setting(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("insecure = true\nlistne = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"max_message_bytes": "many", "insecure": "maybe"}, {}, config)
    text = str(info.value)
    assert "unknown setting 'listne'" in text
    assert "--max-message-bytes" in text
    assert "--insecure" in text
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "insecure": True,
                "listen": "nowhere",
                "log_format": "xml",
                "shutdown_grace": "-1",
                "auth_exempt": "driver.v1.DriverService",
            },
            {},
        )
    lines = str(info.value).splitlines()
    assert any(line.startswith("--listen") for line in lines)
    assert any(line.startswith("--log-format") for line in lines)
    assert any(line.startswith("--shutdown-grace") for line in lines)
    assert any("driver.v1.DriverService can never be exempt" in line for line in lines)


def test_dependency_timeouts_are_settings_and_must_be_bounded() -> None:
    env = {"DRIVER_SERVICE_REDIS_TIMEOUT": "0.25", "DRIVER_SERVICE_STORE_TIMEOUT": "3"}
    settings = load_settings({"insecure": True}, env)
    assert (settings.redis_timeout, settings.store_timeout) == (0.25, 3.0)
    assert (ServerSettings().redis_timeout, ServerSettings().store_timeout) == (0.5, 2.0)
    for value in ("0", "-1", "31"):
        with pytest.raises(ConfigError) as info:
            load_settings({"insecure": True, "redis_timeout": value, "store_timeout": value}, {})
        lines = str(info.value).splitlines()
        assert any(line.startswith("--redis-timeout must be > 0") for line in lines)
        assert any(line.startswith("--store-timeout must be > 0") for line in lines)


def test_read_cache_settings_default_on_and_are_checked() -> None:
    env = {"DRIVER_SERVICE_READ_CACHE_SIZE": "0", "DRIVER_SERVICE_READ_CACHE_STALENESS": "0.5"}
    settings = load_settings({"insecure": True}, env)
    assert (settings.read_cache_size, settings.read_cache_staleness) == (0, 0.5)
    assert (ServerSettings().read_cache_size, ServerSettings().read_cache_staleness) == (
        10_000,
        1.0,
    )
    with pytest.raises(ConfigError) as info:
        load_settings({"insecure": True, "read_cache_size": "-1", "read_cache_staleness": "0"}, {})
    lines = str(info.value).splitlines()
    assert any(line.startswith("--read-cache-size must be >= 0") for line in lines)
    assert any(line.startswith("--read-cache-staleness must be > 0") for line in lines)


def test_partial_tls_material_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "server.crt"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="must be given together"):
        load_settings({"insecure": True, "tls_cert": str(cert)}, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"insecure": True, "token_secret_file": str(tmp_path / "nope")}, {})


def test_shown_settings_mask_store_passwords() -> None:
    settings = ServerSettings(insecure=True, store="sqlite:////var/lib/x.sqlite3")
    assert settings.shown()["store"] == "sqlite:////var/lib/x.sqlite3"
    masked = ServerSettings(store="postgresql://app:s3cret@db:5432/drivers").shown()["store"]
    assert "s3cret" not in masked
    assert masked == "postgresql://app:****@db:5432/drivers"


@pytest.mark.parametrize("share", ["0", "-0.5", "1.5", "nan", "lots"])
def test_a_retention_share_outside_0_to_1_is_one_clear_line(share: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"insecure": True, "history_retention_share": share}, {})
    (line,) = str(info.value).splitlines()
    assert "--history-retention-share" in line


def test_the_retention_share_defaults_to_5_percent_and_takes_the_environment() -> None:
    assert load_settings({"insecure": True}, {}).history_retention_share == 0.05
    env = {"DRIVER_SERVICE_HISTORY_RETENTION_SHARE": "0.2"}
    assert load_settings({"insecure": True}, env).history_retention_share == 0.2

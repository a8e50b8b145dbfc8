"""The one config module: defaults, parsing, and start-up refusals that name the variable."""
import pytest

import config

PRODUCTION = {"APP_ENV": "production", "JWT_SIGNING_KEY_FILE": "/etc/clinic-api/signing.pem"}


def test_defaults_hold_without_any_variable_but_the_signing_key():
    settings = config.load(PRODUCTION)
    assert (settings.rate_limit_default, settings.access_token_ttl_s, settings.bcrypt_rounds) == ("100/minute", 900, 12)
    assert settings.trusted_proxies == () and settings.database_url is None
    assert settings.webhook_delivery_retention_days == 30


@pytest.mark.parametrize("name, value", [("DB_POOL_SIZE", "ten"), ("RATE_LIMIT_ENABLED", "maybe"),
                                         ("BCRYPT_ROUNDS", "3"), ("REQUEST_THREADS", "99"),
                                         ("MAX_HEADER_BYTES", "100"), ("MAX_HEADER_COUNT", "2"),
                                         ("HEADER_TIMEOUT_S", "0"), ("METRICS_TOKEN", "short"),
                                         ("SERVE_DOCS", "perhaps"), ("WEBHOOK_DELIVERY_RETENTION_DAYS", "-1")])
def test_a_malformed_setting_refuses_to_start_naming_it(name, value):
    with pytest.raises(config.ConfigError, match=name):
        config.load({**PRODUCTION, name: value})


def test_production_needs_a_signing_key_and_development_keeps_one_in_the_data_folder(tmp_path):
    with pytest.raises(config.ConfigError, match="JWT_SIGNING_KEY_FILE"):
        config.load({"APP_ENV": "production", "JWT_SECRET": "s" * 40})  # the old HS256 secret no longer does
    assert config.load({"APP_ENV": "production"}, serving=False).jwt_signing_key_file is None
    development = config.load({"APP_ENV": "development", "DATA_DIR": str(tmp_path)})
    assert development.jwt_signing_key_file == tmp_path / "jwt_signing_key.pem"
    listed = config.load({**PRODUCTION, "JWT_VERIFICATION_KEY_FILES": "/old.pem, /next.pem"})
    assert listed.jwt_verification_key_files == ("/old.pem", "/next.pem")


def test_lists_and_booleans_are_parsed():
    settings = config.load({**PRODUCTION, "TRUSTED_PROXIES": " 10.0.0.0/8, 192.168.1.1 ,", "VALIDATE_RESPONSES": "yes"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.1") and settings.validate_responses is True


def test_only_config_reads_the_environment():
    offenders = []
    for path in [*config.ROOT.glob("*.py"), *config.ROOT.glob("models/*.py"), *config.ROOT.glob("middleware/*.py"),
                 *config.ROOT.glob("handlers/*.py")]:
        if path.name != "config.py" and ("os.environ" in path.read_text() or "os.getenv" in path.read_text()):
            offenders.append(path.name)
    assert offenders == []


def test_replicas_are_a_list_and_need_a_primary():
    urls = "postgresql://a@r1:5432/clinic, postgresql://a@r2:5432/clinic"
    settings = config.load({**PRODUCTION, "DATABASE_URL": "postgresql://a@p:5432/clinic", "DATABASE_REPLICA_URLS": urls,
                            "REPLICA_MAX_LAG_SECONDS": "2.5"})
    assert settings.database_replica_urls == ("postgresql://a@r1:5432/clinic", "postgresql://a@r2:5432/clinic")
    assert settings.replica_max_lag_seconds == 2.5
    with pytest.raises(config.ConfigError, match="DATABASE_REPLICA_URLS"):
        config.load({**PRODUCTION, "DATABASE_REPLICA_URLS": urls})
    for lag in ("soon", "0"):
        with pytest.raises(config.ConfigError, match="REPLICA_MAX_LAG_SECONDS"):
            config.load({**PRODUCTION, "REPLICA_MAX_LAG_SECONDS": lag})

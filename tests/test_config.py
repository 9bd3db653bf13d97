import os
import stat
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
from twisted.logger import capturedLogs

from smartyd import config

ROOT = Path(__file__).resolve().parent.parent


GOOD_SECRET = "q3L9vXr2-Tk8wYb5_Hn1Zp7Ds4Fg6Jm0"
MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default state dir is ./var
    cfg = config.load(None)
    assert cfg.http.listen == "tcp:8080:interface=127.0.0.1"
    assert cfg.database.dsn == "" and cfg.database.pool_size == 8
    assert cfg.osmp.account == "ppc" and cfg.osmp.max_sum == Decimal("15000.00")
    assert cfg.tokens.keys == ((tmp_path / "var" / "token-secret").read_text().strip(),)
    assert cfg.assist.poll_interval == 600 and cfg.dreamkas.cache_lifetime == 1800
    assert cfg.dreamkas.stuck_after == 3600


def test_example_file_loads_and_names_every_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(str(ROOT / "etc" / "smartyd.example.toml"))
    unresolved = cfg.replace(tokens=attrs.evolve(cfg.tokens, secret=""))
    assert unresolved == config.Config(source=str(ROOT / "etc" / "smartyd.example.toml"))
    text = (ROOT / "etc" / "smartyd.example.toml").read_text()

    for name, cls in config._SECTIONS.items():
        assert f"[{name}]" in text
        for f in attrs.fields(cls):
            assert f"\n{f.name} =" in text or f"# {f.name} =" in text, f"[{name}] {f.name}"


@pytest.mark.parametrize("value, expected", [
    ("'isp-demo'", "isp-demo"),  # MEGOGO issues it: not promised to be a number
    ("'12345'", "12345"),
    ("12345", "12345"),          # an integer, as configs wrote it before
    ("0", ""),                   # the old "not set"
    ("''", ""),
])
def test_megogo_partner_id_is_a_string(tmp_path, monkeypatch, value, expected):
    monkeypatch.chdir(tmp_path)  # the state dir (token secret) is ./var
    cfg = config.load(write(tmp_path, f"[megogo]\npartner_id = {value}\n"))
    assert cfg.megogo.partner_id == expected


def test_megogo_partner_id_string_starts_megogo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = ("[megogo]\nenabled = true\nxml_url = 'https://megogo.test/all_mgg.xml'\n"
            "partner_id = 'isp-demo'\nsalt = 's'\nsvod_service_id = 5\ntariff_id = 1\n"
            "catalog_tariff_id = 2\n")
    assert config.load(write(tmp_path, text)).megogo.partner_id == "isp-demo"
    with pytest.raises(config.ConfigError, match=r"\[megogo\] partner_id: required"):
        config.load(write(tmp_path, text.replace("'isp-demo'", "0")))


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text,message",
    [
        ("[http]\nlisen = 'tcp:80'\n", "[http] lisen: unknown key"),
        ("[nope]\n", "[nope]: unknown section"),
        ("[database]\npool_size = 'eight'\n", "[database] pool_size: expected an integer"),
        ("[database]\npool_size = 0\n", "[database] pool_size: must be at least 1"),
        ("[http]\nlisten = 'tcp:notaport'\n", "[http] listen: bad endpoint string"),
        ("[http]\nlisten = 'bogus:1'\n", "[http] listen: bad endpoint string"),
        ("[tokens]\nbind_ip = 'yes'\n", "[tokens] bind_ip: expected true or false"),
        ("[osmp]\naccount = 'email'\n", "[osmp] account: expected one of ppc, id, login"),
        ("[osmp]\nmin_sum = '1.001'\n", "[osmp] min_sum: not a non-negative amount"),
        ("[osmp]\nmin_sum = '100'\nmax_sum = '10'\n", "[osmp] min_sum: 100 is above max_sum"),
        ("[osmp]\nallow = ['10.0.0.0/33']\n", "[osmp] allow: not an address or CIDR"),
        ("[assist]\npoll_interval = 300\n", "[assist] poll_interval: must be at least 600"),
        ("[log]\nlevel = 'loud'\n", "[log] level: expected one of"),
        ("[tokens]\nsecret = 'env:SMARTYD_TEST_UNSET_VAR'\n",
         "[tokens] secret: environment variable SMARTYD_TEST_UNSET_VAR is not set"),
        # A feature that is not built has no section: it is refused, never ignored.
        ("[billing_api]\nenabled = true\n", "[billing_api] clients: required when enabled = true"),
        ("[megogo]\nenabled = true\n", "[megogo] xml_url: required when enabled = true"),
        ("[tvzavr]\nenabled = true\n", "[tvzavr] api_url: required when enabled = true"),
        ("[irdeto]\nbogus = 1\n", "[irdeto] bogus: unknown key"),
        ("[epg]\nxmltv_url = 'x'\n", "[epg] xmltv_url: expected an http(s) URL"),
        ("[widgets]\nlanguage = 'de'\n", "[widgets] language: expected one of ru, en"),
        ("[widgets]\nenabled = true\n", "[widgets] allowed_origins: required when enabled"),
        ("[tvmw]\nenabled = true\n", "[tvmw] clients: required when enabled = true"),
        ("[tvmw]\nclients = [{client_id = '1'}]\n", "[tvmw] clients: entry 0: api_key is empty"),
        ("[tvmw]\nclients = [{client_id = '1', api_key = 'k', allow = []}]\n",
         "[tvmw] clients: entry 0: unknown key allow"),
        ("[tvmw]\nsession_ttl = 10\n", "[tvmw] session_ttl: must be at least 60"),
        ("[tvmw]\nxml_devices = ['Android STB']\n", "[tvmw] xml_devices: not a device type"),
        ("[assist]\nenabled = true\nshop_id = '1'\nlogin = 'l'\n",
         "[assist] password: required when enabled = true"),
        ("[payture]\nenabled = true\nhost = 'https://x.payture.com'\n",
         "[payture] merchant_pay_key: required when enabled = true"),
        ("[dreamkas]\nstuck_after = 59\n", "[dreamkas] stuck_after: must be at least 60"),
        ("[dreamkas]\nstuck_after = '1h'\n", "[dreamkas] stuck_after: expected an integer"),
        ("[dreamkas]\nstuck_after = 120\npoll_interval = 120\n",
         "[dreamkas] stuck_after: 120 is not above poll_interval 120"),
        ("[console]\nlisten = 'tcp:notaport'\n", "[console] listen: bad endpoint string"),
        ("[console]\nsecure_cookies = 1\n", "[console] secure_cookies: expected true or false"),
        ("[console]\nenabled = true\nlisten = 'tcp:8080:interface=127.0.0.1'\n",
         "[console] listen: the console has a listener of its own"),
        ("[http\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(str(tmp_path / "absent.toml"))


def test_env_secrets_and_redaction(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTYD_T_SECRET", "s3cr3t-value-from-the-env")
    old = "an-older-secret-still-verifying"
    cfg = config.load(write(tmp_path, "[tokens]\nsecrets = ['env:SMARTYD_T_SECRET', "
                                      f"'{old}']\n[osmp]\npassword = 'pw'\n"))
    assert cfg.tokens.keys == ("s3cr3t-value-from-the-env", old)
    red = config.redacted(cfg)
    assert red["tokens"]["secrets"] == "***" and red["osmp"]["password"] == "***"
    assert "s3cr3t-value" not in repr(red) and old not in repr(red)


# -- [tokens] secret: never a known or weak one, generated when left empty -------------------
@pytest.mark.parametrize(
    "text,message",
    [
        ("secret = 'change-me'", "[tokens] secret: a known placeholder"),
        ("secret = 'CHANGE_ME'", "[tokens] secret: a known placeholder"),
        ("secret = 'change-me-change-me'", "[tokens] secret: a known placeholder"),
        ("secret = '0123456789'", "[tokens] secret: too short (10 bytes, at least 16)"),
        ("secret = 'env:SMARTYD_T_WEAK'", "[tokens] secret: too short (9 bytes, at least 16)"),
        (f"secrets = ['{GOOD_SECRET}', 'change-me']",
         "[tokens] secrets: entry 1 is a known placeholder"),
        (f"secrets = ['0123456789', '{GOOD_SECRET}']",
         "[tokens] secrets: entry 0 is too short (10 bytes, at least 16)"),
        (f"secrets = ['{GOOD_SECRET}', '']", "[tokens] secrets: entry 1 is empty"),
        (f"secret = 'change-me'\nsecrets = ['{GOOD_SECRET}']", "[tokens] secret: a known"),
    ],
)
def test_weak_token_secrets_are_refused_with_how_to_make_one(tmp_path, monkeypatch, text,
                                                             message):
    monkeypatch.setenv("SMARTYD_T_WEAK", "short-one")
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, f"[state]\ndir = '{tmp_path}/var'\n[tokens]\n{text}\n"))
    line = str(e.value)
    assert message in line, line
    assert line.endswith(f"make one with: {MAKE_ONE}")
    assert "\n" not in line and "short-one" not in line and "0123456789" not in line
    assert not (tmp_path / "var").exists()  # refused before touching the state dir


def test_weak_secrets_are_refused_in_dicts_too():
    with pytest.raises(config.ConfigError, match=r"^\[tokens\] secret: too short"):
        config.from_dict({"tokens": {"secret": "0123456789"}})
    cfg = config.from_dict({"tokens": {"secret": GOOD_SECRET}})
    assert cfg.tokens.keys == (GOOD_SECRET,)


def test_an_empty_secret_is_generated_once_in_the_state_dir(tmp_path):
    state = tmp_path / "state"  # does not exist yet
    path = write(tmp_path, f"[state]\ndir = '{state}'\n[tokens]\nsecret = ''\n")
    with capturedLogs() as events:
        cfg = config.load(path)
    secret_file = state / "token-secret"
    secret = secret_file.read_text().strip()
    assert cfg.tokens.keys == (secret,) and len(secret) == 43  # token_urlsafe(32)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert sorted(os.listdir(state)) == ["token-secret"]  # no temporary file left behind
    warnings = [e for e in events if e["log_level"].name == "warn"]
    assert len(warnings) == 1
    text = warnings[0]["log_format"].format(**warnings[0])
    assert str(secret_file) in text and "[tokens] secret" in text
    assert "sharing one database must set the same [tokens] secret" in text
    assert not any(secret in repr(e) for e in events)
    assert secret not in repr(config.redacted(cfg))
    assert config.redacted(cfg)["tokens"]["secret"] == "***"

    with capturedLogs() as again:
        assert config.load(path).tokens.keys == (secret,)  # reused, not regenerated
    assert not [e for e in again if e["log_level"].name == "warn"]
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


def test_the_state_dir_secret_is_checked_too(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "token-secret").write_text("change-me\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, f"[state]\ndir = '{state}'\n"))
    assert str(e.value).startswith(f"[tokens] secret: {state / 'token-secret'}: a known "
                                   "placeholder")
    assert str(e.value).endswith(MAKE_ONE)


def test_an_unreadable_state_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, f"[state]\ndir = '{blocker}/var'\n"))
    assert str(e.value) == f"[tokens] secret: cannot read {blocker}/var/token-secret: " \
                           "Not a directory"


def test_explicit_secrets_leave_the_state_dir_alone(tmp_path):
    state = tmp_path / "state"
    cfg = config.load(write(tmp_path, f"[state]\ndir = '{state}'\n"
                                      f"[tokens]\nsecrets = ['{GOOD_SECRET}']\n"))
    assert cfg.tokens.keys == (GOOD_SECRET,)
    assert not state.exists()


def test_built_in_defaults_never_sign_with_a_known_key():
    """
    A Config made without load() (tests, tools) has no state dir secret: it
    signs with a random key of this process, never with a value anyone knows.
    """
    keys = config.Config().tokens.keys
    assert len(keys) == 1 and len(keys[0]) >= 32
    assert keys == config.from_dict({}).tokens.keys  # one per process
    assert config.Config().tokens.secret == ""


def test_config_is_immutable():
    cfg = config.load(None)
    with pytest.raises(Exception):
        cfg.osmp.max_sum = Decimal("1")


def test_console_section_defaults_and_values(tmp_path):
    assert config.Config().console == config.Console(
        enabled=False, listen="tcp:8090:interface=127.0.0.1", secure_cookies=False)
    cfg = config.load(write(tmp_path, "[console]\nenabled = true\nlisten = 'tcp:9001'\n"
                                      "secure_cookies = true\n"))
    assert (cfg.console.enabled, cfg.console.listen, cfg.console.secure_cookies) == (
        True, "tcp:9001", True)

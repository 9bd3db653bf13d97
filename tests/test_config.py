from decimal import Decimal
from pathlib import Path

import pytest

from smartyd import config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_without_a_file():
    cfg = config.load(None)
    assert cfg.http.listen == "tcp:8080:interface=127.0.0.1"
    assert cfg.database.dsn == "" and cfg.database.pool_size == 8
    assert cfg.osmp.account == "ppc" and cfg.osmp.max_sum == Decimal("15000.00")
    assert cfg.tokens.keys == ("change-me",)
    assert cfg.assist.poll_interval == 600 and cfg.dreamkas.cache_lifetime == 1800


def test_example_file_loads_and_names_every_key():
    cfg = config.load(str(ROOT / "etc" / "smartyd.example.toml"))
    assert cfg == config.Config(source=str(ROOT / "etc" / "smartyd.example.toml"))
    text = (ROOT / "etc" / "smartyd.example.toml").read_text()
    import attrs

    for name, cls in config._SECTIONS.items():
        assert f"[{name}]" in text
        for f in attrs.fields(cls):
            assert f"\n{f.name} =" in text or f"# {f.name} =" in text, f"[{name}] {f.name}"


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
        ("[billing_api]\nenabled = true\n", "[billing_api]: unknown section"),
        ("[megogo]\nenabled = true\n", "[megogo]: unknown section"),
        ("[tvzavr]\nenabled = true\n", "[tvzavr]: unknown section"),
        ("[irdeto]\nenabled = true\n", "[irdeto]: unknown section"),
        ("[assist]\nenabled = true\nshop_id = '1'\nlogin = 'l'\n",
         "[assist] password: required when enabled = true"),
        ("[payture]\nenabled = true\nhost = 'https://x.payture.com'\n",
         "[payture] merchant_pay_key: required when enabled = true"),
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
    monkeypatch.setenv("SMARTYD_T_SECRET", "s3cr3t-value")
    cfg = config.load(write(tmp_path, "[tokens]\nsecrets = ['env:SMARTYD_T_SECRET', 'old']\n"
                                      "[osmp]\npassword = 'pw'\n"))
    assert cfg.tokens.keys == ("s3cr3t-value", "old")
    red = config.redacted(cfg)
    assert red["tokens"]["secrets"] == "***" and red["osmp"]["password"] == "***"
    assert "s3cr3t-value" not in repr(red)


def test_config_is_immutable():
    cfg = config.load(None)
    with pytest.raises(Exception):
        cfg.osmp.max_sum = Decimal("1")

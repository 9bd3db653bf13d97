import io
import json
import os

from twisted.logger import Logger, LogPublisher

from smartyd import logs


def capture(level="info"):
    stream = io.StringIO()
    observer = logs.JSONLineObserver("-", stream=stream)
    publisher = LogPublisher(logs.level_filtered(observer, level))
    return Logger(namespace="smartyd.test", observer=publisher), stream


def lines(stream):
    return [json.loads(l) for l in stream.getvalue().splitlines()]


def test_event_is_one_json_line_with_stable_keys():
    log, stream = capture()
    log.info("credited {amount} to {account}", amount=__import__("decimal").Decimal("10.45"),
             account=42, txn_id="1234567", provider="osmp")
    [rec] = lines(stream)
    assert list(rec)[:4] == ["time", "level", "ns", "event"]
    assert rec["event"] == "credited 10.45 to 42"
    assert rec["level"] == "info" and rec["ns"] == "smartyd.test"
    assert rec["amount"] == "10.45" and rec["account"] == 42 and rec["txn_id"] == "1234567"
    assert rec["time"].endswith("Z")


def test_level_filter():
    log, stream = capture("warn")
    log.info("hidden")
    log.debug("hidden")
    log.warn("shown {x}", x=1)
    assert [r["event"] for r in lines(stream)] == ["shown 1"]


def test_secrets_never_reach_the_log():
    log, stream = capture()
    log.info("login with {password} and {token}", password="hunter2", token="abc.def",
             api_key="k-123", login="alice")
    text = stream.getvalue()
    for secret in ("hunter2", "abc.def", "k-123"):
        assert secret not in text
    [rec] = lines(stream)
    assert rec["password"] == "***" and rec["login"] == "alice"


def test_failure_is_logged_with_traceback():
    log, stream = capture()
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("it broke")
    [rec] = lines(stream)
    assert rec["level"] == "critical" and "ZeroDivisionError" in rec["failure"]


def test_reopen_after_rotation(tmp_path):
    path = tmp_path / "log" / "smartyd.jsonl"
    observer = logs.JSONLineObserver(str(path))
    log = Logger(namespace="t", observer=observer)
    log.info("before")
    os.rename(path, str(path) + ".1")
    log.info("still to the old file")
    observer.reopen()
    log.info("after")
    observer.close()
    old = [json.loads(l)["event"] for l in open(str(path) + ".1")]
    new = [json.loads(l)["event"] for l in open(path)]
    assert old == ["before", "still to the old file"] and new == ["after"]


def test_grep_and_render():
    records = list(logs.read_records([
        '{"time": "2026-11-22T10:00:00.000001Z", "level": "info", "ns": "smartyd.osmp",'
        ' "event": "credited", "txn_id": "7", "account": 5}',
        '{"time": "2026-11-22T10:00:01.000001Z", "level": "warn", "ns": "smartyd.osmp",'
        ' "event": "refused", "txn_id": "8"}',
        "not json at all",
    ]))
    assert len(records) == 3
    grep = logs.parse_grep(["txn_id=7"])
    assert [r["event"] for r in records if logs.matches(r, grep)] == ["credited"]
    assert [r for r in records if logs.matches(r, logs.parse_grep(["account=5"]))]
    line = logs.render(records[0])
    assert line.startswith("2026-11-22 10:00:00.000 INFO     credited")
    assert "txn_id=7" in line and "account=5" in line
    import pytest

    with pytest.raises(ValueError):
        logs.parse_grep(["novalue"])

"""
The OSMP protocol without I/O (smartyd/osmp/protocol.py): result codes,
request syntax, refusals with their comments, the XML answer byte for byte.
Pure (no database): bench/mutants.sh judges the module's mutants with these.
The same rules through HTTP and the ledger: tests/test_osmp.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from smartyd.osmp import protocol as P

TXN_DATE = b"20260301153000"
PAY = {b"command": [b"pay"], b"txn_id": [b"1234567"], b"account": [b"426"],
       b"sum": [b"10.45"], b"txn_date": [TXN_DATE]}


def refused(args, mode="ppc", tz=P.MOSCOW) -> P.Refused:
    with pytest.raises(P.Refused) as caught:
        P.parse_request(args, mode, tz)
    return caught.value


def without(name: bytes, args=PAY) -> dict:
    return {k: v for k, v in args.items() if k != name}


def test_result_codes_are_the_specifications():
    assert (P.OK, P.TEMPORARY_ERROR, P.BAD_ACCOUNT_FORMAT, P.ACCOUNT_NOT_FOUND,
            P.PAYMENT_FORBIDDEN, P.TECHNICAL_REFUSAL, P.ACCOUNT_INACTIVE, P.NOT_COMPLETED,
            P.SUM_TOO_SMALL, P.SUM_TOO_LARGE, P.CANNOT_CHECK, P.OTHER_ERROR) \
        == (0, 1, 4, 5, 7, 8, 79, 90, 241, 242, 243, 300)
    assert P.RESULT_CODES == {0, 1, 4, 5, 7, 8, 79, 90, 241, 242, 243, 300}
    assert P.PROVIDER == "osmp"
    assert P.MOSCOW.utcoffset(None) == timedelta(hours=3)
    assert P.MOSCOW.tzname(None) == "MSK"
    assert P.CONTENT_TYPE == b"text/xml; charset=utf-8"


def test_a_pay_parsed():
    req = P.parse_request(PAY, "ppc")
    assert req == P.OSMPRequest(
        command="pay", txn_id="1234567", external_id="1234567", account="426",
        account_ref=42, sum=Decimal("10.45"),
        txn_date=datetime(2026, 3, 1, 15, 30, tzinfo=P.MOSCOW),
        txn_date_text="20260301153000")
    assert req.txn_date == datetime(2026, 3, 1, 12, 30, tzinfo=timezone.utc)


def test_a_check_needs_no_sum_and_no_date():
    check = {b"command": [b"check"], b"txn_id": [b"0007"], b"account": [b"00426"]}
    req = P.parse_request(check, "ppc")
    assert (req.command, req.txn_id, req.external_id, req.account, req.account_ref, req.sum,
            req.txn_date, req.txn_date_text) == ("check", "0007", "7", "00426", 42, None,
                                                 None, None)
    req = P.parse_request({**check, b"sum": [b"0.5"]}, "id")
    assert (req.sum, req.account_ref) == (Decimal("0.50"), 426)
    # a sum given empty is not a sum
    assert refused({**check, b"sum": [b""]}).result == 300


def test_txn_date_in_another_zone():
    utc3 = timezone(timedelta(hours=5))
    req = P.parse_request(PAY, "ppc", utc3)
    assert req.txn_date == datetime(2026, 3, 1, 10, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize("args, comment, echo", [
    ({}, "command is missing", None),
    (without(b"command"), "command is missing", "1234567"),
    ({**PAY, b"command": [b""]}, "command is missing", "1234567"),
    ({**PAY, b"command": [b"refund"]}, "unknown command", "1234567"),
    ({**PAY, b"command": [b"PAY"]}, "unknown command", "1234567"),
    ({**PAY, b"command": [b"pay", b"pay"]}, "command is given more than once", "1234567"),
    (without(b"txn_id"), "txn_id is missing or not 1-20 digits", None),
    ({**PAY, b"txn_id": [b"12a"]}, "txn_id is missing or not 1-20 digits", None),
    ({**PAY, b"txn_id": [b"1" * 21]}, "txn_id is missing or not 1-20 digits", None),
    ({**PAY, b"txn_id": [b""]}, "txn_id is missing or not 1-20 digits", None),
    ({**PAY, b"txn_id": [b"1", b"1"]}, "txn_id is given more than once", None),
    (without(b"account"), "account is missing", "1234567"),
    ({**PAY, b"account": [b"426", b"426"]}, "account is given more than once", "1234567"),
    (without(b"sum"), "sum is missing", "1234567"),
    ({**PAY, b"sum": [b"1.00", b"1.00"]}, "sum is given more than once", "1234567"),
    ({**PAY, b"sum": [b"10"]}, "sum is not digits with a dot and 1-2 decimals", "1234567"),
    ({**PAY, b"sum": [b"10.000"]}, "sum is not digits with a dot and 1-2 decimals", "1234567"),
    ({**PAY, b"sum": [b"1234567890.00"]}, "sum is not digits with a dot and 1-2 decimals",
     "1234567"),
    ({**PAY, b"sum": [b"-1.00"]}, "sum is not digits with a dot and 1-2 decimals", "1234567"),
    ({**PAY, b"sum": [b".50"]}, "sum is not digits with a dot and 1-2 decimals", "1234567"),
    (without(b"txn_date"), "txn_date is missing", "1234567"),
    ({**PAY, b"txn_date": [TXN_DATE[:-1]]}, "txn_date is not a YYYYMMDDHHMMSS date",
     "1234567"),
    ({**PAY, b"txn_date": [b"20260230120000"]}, "txn_date is not a YYYYMMDDHHMMSS date",
     "1234567"),
    ({**PAY, b"txn_date": [TXN_DATE, TXN_DATE]}, "txn_date is given more than once", "1234567"),
])
def test_malformed_requests_are_300_with_a_comment(args, comment, echo):
    r = refused(args)
    assert (r.result, r.comment, r.txn_id, str(r)) == (300, comment, echo, comment)


def test_the_largest_sum_and_txn_id():
    req = P.parse_request({**PAY, b"sum": [b"999999999.99"], b"txn_id": [b"9" * 20]}, "id")
    assert req.sum == Decimal("999999999.99") and req.external_id == "9" * 20
    req = P.parse_request({**PAY, b"sum": [b"1.5"], b"txn_id": [b"0"]}, "id")
    assert req.sum == Decimal("1.50") and (req.txn_id, req.external_id) == ("0", "0")


@pytest.mark.parametrize("mode, raw, ref", [
    ("ppc", b"426", 42), ("ppc", b"000426", 42), ("ppc", b"59071", 5907), ("ppc", b"11", 1),
    ("id", b"1", 1), ("id", b"42", 42), ("id", b"0042", 42), ("id", b"9223372036854775807", 2**63 - 1),
    ("login", b"alice", "alice"), ("login", b"a.b-c_d+e@f", "a.b-c_d+e@f"),
    ("login", b"0042", "0042"), ("login", b"x" * 64, "x" * 64),
])
def test_account_modes(mode, raw, ref):
    assert P.parse_account(raw, mode) == (raw.decode(), ref)


@pytest.mark.parametrize("mode, raw", [
    ("ppc", b"427"), ("ppc", b"0"), ("ppc", b"00"), ("ppc", b""), ("ppc", b"42a"),
    ("ppc", b"4" * 65), ("id", b"0"), ("id", b"000"), ("id", b""), ("id", b"-1"),
    ("id", b"9223372036854775808"), ("id", b"4 2"), ("id", "٤٢".encode()),
    ("login", b""), ("login", b"a b"), ("login", b"x" * 65), ("login", b"\xff\xfe"),
    ("login", "ёж".encode()),
])
def test_bad_accounts_are_4_naming_the_mode(mode, raw):
    with pytest.raises(P.Refused) as caught:
        P.parse_account(raw, mode, "77")
    name = {"ppc": "personal payment code", "id": "account number", "login": "login"}[mode]
    assert (caught.value.result, caught.value.comment, caught.value.txn_id) \
        == (4, f"account is not a valid {name}", "77")


def test_an_account_of_64_bytes_is_looked_at_65_is_not():
    assert P.parse_account(b"0" * 62 + b"42", "id") == ("0" * 62 + "42", 42)
    with pytest.raises(P.Refused):
        P.parse_account(b"0" * 63 + b"42", "id")


def test_a_bad_account_in_a_request_echoes_the_txn_id():
    r = refused({**PAY, b"account": [b"427"]})
    assert (r.result, r.txn_id) == (4, "1234567")
    # the syntax of every other field is checked before the account's
    r = refused({**PAY, b"account": [b"427"], b"sum": [b"1"]})
    assert r.result == 300


@pytest.mark.parametrize("raw, moment", [
    (b"20260301153000", datetime(2026, 3, 1, 15, 30, 0, tzinfo=P.MOSCOW)),
    (b"19991231235959", datetime(1999, 12, 31, 23, 59, 59, tzinfo=P.MOSCOW)),
    (b"20240229000001", datetime(2024, 2, 29, 0, 0, 1, tzinfo=P.MOSCOW)),
])
def test_txn_dates(raw, moment):
    got = P.parse_txn_date(raw)
    assert got == moment and got.tzinfo is P.MOSCOW
    assert P.format_txn_date(moment.timestamp()) == raw.decode()


@pytest.mark.parametrize("raw", [b"2026030115300", b"202603011530000", b"20260230120000",
                                 b"20261301120000", b"20260301250000", b"2026-03-01T1530",
                                 b"", b"2026030115300a"])
def test_not_txn_dates(raw):
    assert P.parse_txn_date(raw) is None


def test_txn_date_zone_and_formatting():
    utc = timezone.utc
    assert P.parse_txn_date(b"20260301153000", utc) == datetime(2026, 3, 1, 15, 30, tzinfo=utc)
    assert P.format_txn_date(0) == "19700101030000"
    assert P.format_txn_date(0, utc) == "19700101000000"
    assert P.format_txn_date(1.9, utc) == "19700101000001"


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 31),
                    timezones=st.just(P.MOSCOW)))
def test_txn_date_round_trip(moment):
    moment = moment.replace(microsecond=0)
    text = P.format_txn_date(moment.timestamp())
    assert P.parse_txn_date(text.encode()) == moment


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from([b"command", b"txn_id", b"account", b"sum", b"txn_date", b"other"]),
    st.lists(st.binary(max_size=24) | st.sampled_from(
        [b"pay", b"check", b"426", b"10.00", TXN_DATE, b"1"]), max_size=2)),
    st.sampled_from(["ppc", "id", "login"]))
def test_parse_request_returns_or_refuses_with_a_known_code(args, mode):
    try:
        req = P.parse_request(args, mode)
    except P.Refused as r:
        assert r.result in (300, 4) and r.comment
        assert r.txn_id is None or r.txn_id == args[b"txn_id"][0].decode()
        return
    assert req.command in ("check", "pay")
    assert req.external_id == str(int(req.txn_id))
    assert (req.sum is not None and req.txn_date is not None) or req.command == "check"


# -- answers -----------------------------------------------------------------------------
def test_the_answer_document_byte_for_byte():
    full = P.answer(P.OK, "1234567", prv_txn=42, sum=Decimal("10.5"),
                    fields=(("balance", "10.50"), ("name", "Ё & <b>")))
    assert full.to_xml() == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<response><osmp_txn_id>1234567</osmp_txn_id><prv_txn>42</prv_txn>"
        b"<sum>10.50</sum><result>0</result><comment>OK</comment><fields>"
        b'<field1 name="balance">10.50</field1>'
        b'<field2 name="name">\xd0\x81 &amp; &lt;b&gt;</field2></fields></response>')
    bare = P.answer(P.OTHER_ERROR, None)
    assert bare.to_xml() == (b'<?xml version="1.0" encoding="UTF-8"?>\n'
                             b"<response><result>300</result><comment>other error</comment>"
                             b"</response>")
    assert P.Answer(5, "x", prv_txn=0, sum=Decimal("0")).to_xml().endswith(
        b"<response><prv_txn>0</prv_txn><sum>0.00</sum><result>5</result>"
        b"<comment>x</comment></response>")


def test_standard_comments_and_an_own_one():
    assert {code: P.answer(code, "1").comment for code in sorted(P.RESULT_CODES)} == {
        0: "OK",
        1: "temporary error, retry later",
        4: "bad account format",
        5: "account not found",
        7: "payments to this account are forbidden",
        8: "payment refused for technical reasons",
        79: "account is not active",
        90: "payment not completed, retry later",
        241: "sum too small",
        242: "sum too large",
        243: "cannot check the account now",
        300: "other error",
    }
    a = P.answer(P.OTHER_ERROR, "9", "txn_date is too old", prv_txn=3)
    assert (a.result, a.comment, a.txn_id, a.prv_txn, a.sum, a.fields) \
        == (300, "txn_date is too old", "9", 3, None, ())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(P.RESULT_CODES)), st.text(max_size=40),
       st.lists(st.tuples(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                          st.text(max_size=20)), max_size=3))
def test_any_answer_is_well_formed(result, comment, fields):
    # XML 1.0 cannot carry most control characters: answers never hold them.
    def clean(s):
        return "".join(c for c in s if c in "\t\n" or (" " <= c and c not in "\ufffe\uffff")
                       and not 0xD800 <= ord(c) <= 0xDFFF)
    comment = clean(comment) or "x"
    fields = tuple((n, clean(v)) for n, v in fields)
    doc = etree.fromstring(P.answer(result, "5", comment, fields=fields).to_xml())
    assert doc.findtext("result") == str(result)
    assert doc.findtext("comment") == comment
    assert [(f.tag, f.get("name"), f.text or "") for f in doc.iterfind("fields/*")] == [
        (f"field{i}", n, v) for i, (n, v) in enumerate(fields, 1)]


# -- from a request that was not parsed ---------------------------------------------------------
@pytest.mark.parametrize("args, label", [
    ({b"command": [b"check"]}, "check"), ({b"command": [b"pay"]}, "pay"),
    ({b"command": [b"refund"]}, "other"), ({b"command": [b"pay", b"pay"]}, "other"),
    ({b"command": []}, "other"), ({}, "other"),
])
def test_command_label(args, label):
    assert P.command_label(args) == label


def test_raw_account_is_shortened_and_decoded():
    assert P.raw_account({}) is None
    assert P.raw_account({b"account": []}) is None
    assert P.raw_account({b"account": [b"426", b"x"]}) == "426"
    assert P.raw_account({b"account": [b"a" * 70]}) == "a" * 64
    assert P.raw_account({b"account": [b"\xff1"]}) == "\ufffd1"

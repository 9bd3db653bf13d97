"""
ASSIST: the wire formats (CSV report in cp1251, orderstate XML, action answers,
CheckValues, payment forms), the actual-status rules, and the results poll
against the fake gateway -- crediting a paid order exactly once, refusing
mismatches and unknown orders, backing off when the gateway is down, slow or
answers garbage -- plus two-stage charge / cancel, the push and the order endpoint.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from decimal import Decimal

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from conftest import make_config
from fakes.assist import FakeAssist, in_memory_client
from smartyd import ledger
from smartyd.config import ConfigError
from smartyd.gateways import assist as A
from smartyd.gateways import orders
from smartyd.gateways.assist_service import POLLER_JOB
from smartyd.metrics import Metrics
from smartyd.partners import HTTPClientService, PartnerProtocolError, PartnerRefused
from smartyd.poller import Poller
from smartyd.wiring import build_app

SETTINGS = {"enabled": True, "generation": "legacy", "shop_id": "111111",
            "login": "shoplogin", "password": "shoppass1", "secret": "push-secret",
            "test_mode": True, "return_url": "https://portal.example/paid"}


def assist_config(**over):
    return make_config(assist={**SETTINGS, **over})


def bill(status, minute=0, number=None, order="100001", amount="150.00", date=True,
         currency="RUB"):
    when = datetime.datetime(2026, 11, 20, 12, 0) + datetime.timedelta(minutes=minute)
    return A.BillResult(bill_number=number or str(5000 + minute), order_number=order,
                        status=status, amount=None if amount is None else Decimal(amount),
                        currency=currency, order_date=when if date else None)


# -- the CSV report ---------------------------------------------------------------------------------
CP1251_REPORT = (
    "Order Number;Result Code;Comment;Order Date;Order Total;Currency Code;Lastname;"
    "Card Number;Payment No.;Order State;Paket date;Payment Type\r\n"
    "100001;AS000;Оплата интернета;19.02.2010 04:59:14;150.00;RUB;Иванов;411111******1111;"
    "5431001;Authorized;19.02.2010 05:00:01;1\r\n"
    "100002;AS100;UNKNOWN;UNKNOWN;1 000,50;RUB;UNKNOWN;UNKNOWN;5431002;Not authorized;"
    "UNKNOWN;1\r\n"
    ";AS000;no bill;19.02.2010 04:59:14;1.00;RUB;;;;Authorized;;1\r\n"
    "\r\n"
).encode("cp1251")


def test_csv_report_in_cp1251_with_unknown_values():
    report = A.parse_csv_report(A.decode(CP1251_REPORT))
    assert report.skipped == 1  # the row without a payment number
    first, second = report.rows
    assert (first.bill_number, first.order_number, first.status) == (
        "5431001", "100001", "Authorized")
    assert first.amount == Decimal("150.00") and first.currency == "RUB"
    assert first.order_date == datetime.datetime(2010, 2, 19, 4, 59, 14)
    assert first.packet_date == datetime.datetime(2010, 2, 19, 5, 0, 1)
    assert first.details == {"comment": "Оплата интернета", "payment_type": "1"}
    assert "Иванов" not in json.dumps(first.details, ensure_ascii=False)  # no names kept
    # UNKNOWN is empty; "1 000,50" is an amount
    assert second.order_date is None and second.packet_date is None
    assert second.amount == Decimal("1000.50") and "comment" not in second.details


def test_report_decoding_honours_a_declared_charset_and_a_bom():
    text = "Order Number;Payment No.;Order State;Comment\r\n7;1;Authorized;Привет\r\n"
    for body, header in [(text.encode("utf-8"), None),
                         (b"\xef\xbb\xbf" + text.encode("utf-8"), None),
                         (text.encode("cp1251"), "text/plain; charset=windows-1251"),
                         (text.encode("koi8-r"), 'text/csv; charset="koi8-r"')]:
        report = A.parse_csv_report(A.decode(body, header))
        assert report.rows[0].details["comment"] == "Привет", (body, header)


@pytest.mark.parametrize("body, error", [
    (b"<html><body>Login failed</body></html>", PartnerProtocolError),
    (b"  \r\n<?xml version='1.0'?><result/>", PartnerProtocolError),
    (b"Foo;Bar\r\n1;2\r\n", PartnerProtocolError),
    (b"ERROR:AS998;", PartnerRefused),
])
def test_report_that_is_not_a_report(body, error):
    with pytest.raises(error):
        A.parse_csv_report(A.decode(body))


def test_rows_with_control_characters_are_skipped():
    # PostgreSQL text cannot hold NUL: such a row never reaches the database
    report = A.parse_csv_report("Order Number;Payment No.;Order State\r\n1;2;Auth\x00orized\r\n")
    assert report.rows == () and report.skipped == 1


def test_report_error_line_carries_the_gateway_code():
    with pytest.raises(PartnerRefused) as e:
        A.parse_csv_report("ERROR:AS998;")
    assert e.value.code == "AS998" and e.value.partner == "assist"
    with pytest.raises(PartnerRefused) as e:
        A.parse_csv_report("ERROR: Authorization failed")
    assert e.value.code == "Authorization failed"


def test_empty_report_is_no_results():
    assert A.parse_csv_report("") == A.Report(())
    assert A.parse_csv_report("Order Number;Payment No.;Order State\r\n").rows == ()


# -- the XML (current generation) --------------------------------------------------------------------
ORDERSTATE = b"""<?xml version='1.0' encoding='utf-8' standalone='yes'?>
<result firstcode="0" secondcode="0" count="2"><orders>
<order><ordernumber>100001</ordernumber><billnumber>5431001.1</billnumber>
<orderstate>Approved</orderstate><orderamount>150.00</orderamount>
<ordercurrency>RUB</ordercurrency><orderdate>20.11.2026 12:01:00</orderdate>
<packetdate>UNKNOWN</packetdate><responsecode>AS000</responsecode><message>ok</message>
<meannumber>411111******1111</meannumber><firstname>Ivan</firstname></order>
<order><ordernumber>100001</ordernumber><billnumber></billnumber><orderstate>Declined</orderstate>
</order></orders></result>"""


def test_orderstate_xml():
    report = A.parse_xml_result(ORDERSTATE)
    assert report.skipped == 1  # no bill number
    (row,) = report.rows
    assert (row.bill_number, row.order_number, row.status, row.amount) == (
        "5431001.1", "100001", "Approved", Decimal("150.00"))
    assert row.order_date == datetime.datetime(2026, 11, 20, 12, 1) and row.packet_date is None
    assert row.details == {"message": "ok"}  # no card numbers, no names


@pytest.mark.parametrize("body, error, code", [
    (b'<result firstcode="5" secondcode="104" count="0"/>', PartnerRefused, "5/104"),
    (b"<html><body>Maintenance</body></html>", PartnerProtocolError, None),
    (b"<result><order/></result>", PartnerProtocolError, None),  # no firstcode
    (b"not xml at all", PartnerProtocolError, None),
    (b"", PartnerProtocolError, None),
    # a DTD is refused outright: no file read, no entity expansion
    (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     b'<result firstcode="0" secondcode="0"><order><ordernumber>&x;</ordernumber>'
     b"<billnumber>1</billnumber><orderstate>Approved</orderstate></order></result>",
     PartnerProtocolError, None),
    (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "Approved">]>'
     b'<result firstcode="0" secondcode="0"><order><ordernumber>1</ordernumber>'
     b"<billnumber>1</billnumber><orderstate>&a;</orderstate></order></result>",
     PartnerProtocolError, None),
])
def test_orderstate_faults(body, error, code):
    with pytest.raises(error) as e:
        A.parse_xml_result(body)
    if code:
        assert e.value.code == code


# The real gateway's answer (as public clients recorded it): an internal DTD subset of
# element and attribute declarations -- no entities -- before <result>.
ORDERSTATE_WITH_DTD = b"""<?xml version='1.0' encoding='utf-8' standalone='yes'?>
<!DOCTYPE result [
<!ATTLIST result
 firstcode CDATA #REQUIRED
 secondcode CDATA #REQUIRED
 count CDATA #REQUIRED>
<!ELEMENT result (order*)>
<!ELEMENT order (ordernumber?,billnumber?,orderamount?,ordercurrency?,orderstate?,packetdate?)>
<!ELEMENT ordernumber (#PCDATA)>
<!ELEMENT orderstate (#PCDATA)>]>
<result firstcode='0' secondcode='0' count='1'>
  <order>
    <ordernumber>100</ordernumber>
    <billnumber>5775486650107611</billnumber>
    <orderamount>4.00</orderamount>
    <ordercurrency>RUB</ordercurrency>
    <orderstate>Canceled</orderstate>
    <packetdate>27.09.2016 23:24</packetdate>
    <signature></signature>
    <checkvalue>74DEB154081757F1E8097DDFAC35FC5C</checkvalue>
  </order>
</result>"""


def test_orderstate_with_the_gateways_dtd_of_declarations_is_read():
    (row,) = A.parse_xml_result(ORDERSTATE_WITH_DTD).rows
    assert (row.order_number, row.bill_number, row.status, row.amount, row.currency) == (
        "100", "5775486650107611", "Canceled", Decimal("4.00"), "RUB")


@pytest.mark.parametrize("doctype, attrs", [
    # a parameter entity, an external DTD: refused although the answer is otherwise good
    ('<!DOCTYPE result [<!ENTITY % p "x"><!ELEMENT result ANY>]>', 'firstcode="0" '),
    ('<!DOCTYPE result SYSTEM "http://127.0.0.1:1/result.dtd">', 'firstcode="0" '),
    # ATTLIST defaults that would answer firstcode 0 for an answer without one
    ('<!DOCTYPE result [<!ATTLIST result firstcode CDATA "0">]>', ""),
    ('<!DOCTYPE result [<!ATTLIST result secondcode CDATA #REQUIRED'
     ' firstcode CDATA #FIXED "0">]>', ""),
])
def test_orderstate_dtd_with_entities_defaults_or_external_is_refused(doctype, attrs):
    body = (f'<?xml version="1.0"?>{doctype}<result {attrs}secondcode="0">'
            "<order><ordernumber>1</ordernumber><billnumber>1</billnumber>"
            "<orderstate>Approved</orderstate></order></result>").encode()
    with pytest.raises(PartnerProtocolError, match="not XML"):
        A.parse_xml_result(body)


def test_action_answers():
    assert A.parse_action_answer("Order Number:1;Payment No.:2;Order State:Captured;", "x") == {
        "Order Number": "1", "Payment No.": "2", "Order State": "Captured"}
    for text, code in [("ERROR:AS400;", "AS400"), ("ERROR: Wrong Billnumber", "Wrong Billnumber"),
                       ("Result:x;ERROR:AS101;", "AS101")]:
        with pytest.raises(PartnerRefused) as e:
            A.parse_action_answer(text, "charge")
        assert e.value.code == code
    with pytest.raises(PartnerProtocolError):
        A.parse_action_answer("<html>oops</html>", "charge")


# -- the actual status of an order -------------------------------------------------------------------
@pytest.mark.parametrize("bills, expected", [
    ([], None),
    ([bill("in process")], None),
    ([bill("Authorized")], "Authorized"),
    ([bill("Not authorized")], "Not authorized"),
    # a positive result hides its negative pair, newer or older
    ([bill("Authorized", 1), bill("Not authorized", 2)], "Authorized"),
    ([bill("Not authorized", 1), bill("Authorized", 2)], "Authorized"),
    # "in process" is ignored even when newest
    ([bill("Not authorized", 1), bill("in process", 2)], "Not authorized"),
    ([bill("Authorized", 1), bill("In  Process", 2)], "Authorized"),
    # two-stage: newest first
    ([bill("Preauthorized", 1), bill("Captured", 2)], "Captured"),
    ([bill("Preauthorized", 1), bill("Not captured", 2)], "Not captured"),
    ([bill("Preauthorized", 1), bill("Captured", 2), bill("Not captured", 3)], "Captured"),
    ([bill("Preauthorized", 1), bill("Voided", 2)], "Voided"),
    ([bill("Authorized", 1), bill("Refunded", 2)], "Refunded"),
    ([bill("Authorized", 1), bill("Refunded", 2), bill("Not Refunded", 3)], "Refunded"),
    ([bill("Authorized", 1), bill("Not refunded", 2)], "Not refunded"),
    # unknown dates sort last; then the bill number decides
    ([bill("Authorized", 1, date=False), bill("Not authorized", 2)], "Authorized"),
    ([bill("Not authorized", 1, "90", date=False), bill("Refunded", 1, "100", date=False)],
     "Refunded"),
])
def test_actual_status_rules(bills, expected):
    actual = A.actual_result(bills, A.LEGACY)
    assert (actual.status if actual else None) == expected


@pytest.mark.parametrize("status, two_stage, amount, kind, ours", [
    ("Authorized", False, "150.00", "credit", "paid"),
    ("Authorized", False, "149.99", "mismatch", "mismatch"),
    ("Authorized", False, None, "mismatch", "mismatch"),
    ("Authorized", True, "150.00", "set", "unknown"),  # two-stage pays by Captured only
    ("Preauthorized", True, "150.00", "set", "blocked"),
    ("Preauthorized", False, "150.00", "set", "unknown"),
    ("Captured", True, "150.00", "credit", "paid"),
    ("Captured", False, "150.00", "set", "unknown"),
    ("Not captured", True, "150.00", "set", "blocked"),
    ("Not authorized", False, "150.00", "set", "declined"),
    ("Voided", True, "150.00", "set", "reversed"),
    ("Not refunded", False, "150.00", "keep", None),
    ("Chargeback-ish", False, "150.00", "set", "unknown"),
])
def test_decide(status, two_stage, amount, kind, ours):
    d = A.decide([bill(status, amount=amount)], A.LEGACY, Decimal("150.00"), two_stage)
    assert (d.kind, d.status) == (kind, ours)


@pytest.mark.parametrize("paid_in, ordered_in, kind, why", [
    ("RUB", "RUB", "credit", None),
    ("USD", "RUB", "mismatch", "currency"),  # 160.00 USD is not 160.00 RUB
    ("EUR", "RUB", "mismatch", "currency"),
    (None, "RUB", "mismatch", "currency"),  # a currency nobody named is no proof
    (" rur ", "RUB", "credit", None),  # the legacy gateway's spelling of the rouble
    ("usd", "USD", "credit", None),
])
def test_decide_compares_the_currency_too(paid_in, ordered_in, kind, why):
    for status, gen, two_stage in [("Authorized", A.LEGACY, False),
                                   ("Captured", A.LEGACY, True),
                                   ("Approved", A.CURRENT, False)]:
        d = A.decide([bill(status, amount="160.00", currency=paid_in)], gen, Decimal("160.00"),
                     two_stage, ordered_in)
        assert (d.kind, d.why) == (kind, why), (status, paid_in)


@pytest.mark.parametrize("status, two_stage, kind, ours", [
    ("Approved", False, "credit", "paid"),
    ("Approved", True, "credit", "paid"),
    ("Delayed", True, "set", "blocked"),
    ("Declined", False, "set", "declined"),
    ("Timeout", False, "set", "declined"),
    ("Canceled", True, "set", "reversed"),
    ("PartialDelayed", True, "set", "unknown"),
    ("In Process", False, "pending", None),
])
def test_decide_current_generation(status, two_stage, kind, ours):
    d = A.decide([bill(status)], A.CURRENT, Decimal("150.00"), two_stage)
    assert (d.kind, d.status) == (kind, ours)


STATUSES = ["Authorized", "Not authorized", "Preauthorized", "Not preauthorized", "Captured",
            "Not captured", "Voided", "Not voided", "Refunded", "Not refunded", "Reversaled",
            "Not reversaled", "in process", "weird"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STATUSES), st.integers(0, 50), st.booleans()),
                max_size=8))
def test_actual_status_properties(spec):
    bills = [bill(s, m, number=str(i), date=d) for i, (s, m, d) in enumerate(spec)]
    actual = A.actual_result(bills, A.LEGACY)
    states = {b.state for b in bills}
    if actual is None:
        assert states <= {"in process"}
        return
    assert actual in bills and actual.state != "in process"
    for positive, negatives in A.LEGACY.pairs.items():
        if positive in states:
            assert actual.state not in negatives


# -- garbage never crashes, never credits ----------------------------------------------------------------
def _never_credits_wrongly(rows):
    for number in {r.order_number for r in rows}:
        mine = [r for r in rows if r.order_number == number]
        for two_stage in (False, True):
            d = A.decide(mine, A.LEGACY, Decimal("150.00"), two_stage)
            if d.kind == "credit":
                assert d.result.amount == Decimal("150.00")
                assert A.norm_currency(d.result.currency) == "RUB"
                assert A.classify(d.result.state, A.LEGACY, two_stage) == "paid"
                assert d.result in mine


HEADER = "Order Number;Payment No.;Order State;Order Total;Order Date\r\n"
cells = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) \
    | st.sampled_from(["Authorized", "Captured", "150.00", "150", "UNKNOWN", "", "100001",
                       "19.02.2010 04:59:14", '"', "5431001"])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_report_parser_on_arbitrary_bytes(body):
    try:
        report = A.parse_csv_report(A.decode(body))
    except (PartnerProtocolError, PartnerRefused):
        return
    for r in report.rows:
        assert A._BILL_RE.match(r.bill_number) and r.order_number and r.status
    _never_credits_wrongly(report.rows)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(cells, max_size=7), max_size=8))
def test_report_parser_on_garbage_rows(rows):
    text = HEADER + "\r\n".join(";".join(r) for r in rows)
    try:
        report = A.parse_csv_report(text)
    except (PartnerProtocolError, PartnerRefused):
        return
    _never_credits_wrongly(report.rows)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(
    lambda s: ('<result firstcode="0" secondcode="0"><order>' + s + "</order></result>").encode(),
    st.text(max_size=200)))
def test_xml_parser_on_garbage(body):
    try:
        report = A.parse_xml_result(body)
    except (PartnerProtocolError, PartnerRefused):
        return
    _never_credits_wrongly(report.rows)


# -- CheckValues and forms ---------------------------------------------------------------------------
def test_current_check_value_vector_from_the_design():
    assert A.current_check_value("secret", "111111", "ok", "4.00", "RUB", "Canceled") == \
        "74DEB154081757F1E8097DDFAC35FC5C"


def test_legacy_check_value():
    # MD5("111111" "100023" "150.00" "RUB" "secret"), upper-case hex
    assert A.legacy_check_value("111111", "100023", "150.00", "RUB", "secret") == \
        "E092BAD6316E2A452C3F98EFB2E8E773"


def test_check_value_comparison():
    v = "74DEB154081757F1E8097DDFAC35FC5C"
    assert A.check_value_matches(v, v.lower())
    assert A.check_value_matches(v, " " + v + " ")
    assert not A.check_value_matches(v, v[:-1] + "D")
    assert not A.check_value_matches(v, None) and not A.check_value_matches(v, "")
    assert not A.check_value_matches(v, "ЖЖЖ")


def test_legacy_form_in_cp1251_with_delay_for_two_stage():
    cfg = assist_config().assist
    form = A.payment_form(cfg, "100001", Decimal("150"), True, "Оплата интернета")
    assert form.url == "https://test.assist.ru/shops/purchase.cfm"
    assert form.charset == "windows-1251"
    fields = dict(form.fields)
    assert fields["Shop_IDP"] == "111111" and fields["Order_IDP"] == "100001"
    assert fields["Subtotal_P"] == "150.00" and fields["Delay"] == "1"
    assert fields["URL_RETURN_OK"] == "https://portal.example/paid"
    assert b"Comment=%CE%EF%EB%E0%F2%E0+" in form.body()  # cp1251 bytes, not UTF-8
    assert 'accept-charset="windows-1251"' in form.html()
    single = A.payment_form(cfg, "100002", Decimal("1.5"), False)
    assert dict(single.fields)["Delay"] == "0" and "Comment" not in dict(single.fields)
    production = A.payment_form(assist_config(test_mode=False).assist, "1", Decimal(1), False)
    assert production.url == "https://secure.assist.ru/shops/purchase.cfm"
    own = A.payment_form(assist_config(server="https://assist.internal/").assist, "1",
                         Decimal(1), False)
    assert own.url == "https://assist.internal/shops/purchase.cfm"
    with pytest.raises(ValueError):
        A.payment_form(cfg, "1", Decimal(1), False, "emoji 😀 is not cp1251")


def test_current_form():
    cfg = assist_config(generation="current").assist
    form = A.payment_form(cfg, "100001", Decimal("150"), False, 'a "quoted" <comment> 😀')
    assert form.url == "https://test.paysecure.ru/pay/order.cfm" and form.charset == "utf-8"
    fields = dict(form.fields)
    assert fields["Merchant_ID"] == "111111" and fields["OrderNumber"] == "100001"
    assert fields["OrderAmount"] == "150.00" and fields["Delay"] == "0"
    assert "&lt;comment&gt;" in form.html() and "&quot;quoted&quot;" in form.html()
    production = A.payment_form(assist_config(generation="current", test_mode=False).assist,
                                "1", Decimal(1), False)
    assert production.url == "https://payments.paysecure.ru/pay/order.cfm"


# -- against the fake gateway ----------------------------------------------------------------------------
class Env:
    """One smartyd instance's gateways, wired to a fake ASSIST."""

    def __init__(self, db, metrics, cfg, fake, clock):
        self.db, self.metrics, self.fake, self.clock = db, metrics, fake, clock
        self.app = build_app(cfg, reactor=clock, db=db, metrics=metrics,
                             http_client=fake.client(), ready=True)
        self.service = self.app.features["assist"].handle
        [self.poller] = self.app.features["assist"].services
        self.web = in_memory_client(self.app.root)

    async def account(self, login="alice", password="pw-alice"):
        pw_hash = ledger.hash_password(password) if password else ""
        return await self.db.run(ledger.create_account, login, pw_hash)

    async def order(self, account_id, amount="150.00", two_stage=False):
        order, _ = await self.service.create_order(account_id, amount, two_stage)
        return order

    async def get(self, number):
        return await self.db.run(orders.get, "assist", number)

    async def balance(self, account_id):
        return (await self.db.run(ledger.get_account, account_id)).balance

    async def payments(self):
        return await self.db.fetchval("SELECT count(*) FROM payments WHERE provider = 'assist'")


@pytest.fixture
def fake():
    return FakeAssist()


@pytest.fixture
def make_env(db, metrics, fake):
    def make(generation="legacy", clock=None, metrics_=None, **over):
        return Env(db, metrics_ or metrics, assist_config(generation=generation, **over), fake,
                   clock or Clock())

    return make


@pytest.fixture
def log_events():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def gw_events(metrics, event, provider="assist"):
    return metrics.gateway_events.labels(provider, event)._value.get()


async def allow_next_run(db):
    await db.execute("UPDATE job_runs SET last_started = now() - interval '601 seconds'")


@pytest_twisted.ensureDeferred
async def test_paid_order_is_credited_once_across_repeated_polls(make_env, fake, metrics):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    fake.pay(order.order_number, "150.00", "Not authorized")
    summary = await env.service.poll()
    assert summary.credited == () and (await env.get(order.order_number)).status == "declined"
    fake.pay(order.order_number, "150.00", "in process", date=None)
    fake.pay(order.order_number, "150.00", "Authorized")
    summary = await env.service.poll()
    assert summary.credited == (order.order_number,) and summary.bills == 3
    for _ in range(3):
        assert (await env.service.poll()).credited == ()
    stored = await env.get(order.order_number)
    assert stored.status == "paid" and stored.gateway_status == "Authorized" and stored.credited
    assert await env.balance(alice.id) == Decimal("150.00")
    assert await env.payments() == 1
    payment = await env.db.fetchall(
        "SELECT external_id, account_id, amount, details->>'bill_number' FROM payments")
    assert payment == [(order.order_number, alice.id, Decimal("150.00"),
                        fake.bills_of(order.order_number)[-1]["bill"])]
    assert await env.db.fetchval("SELECT count(*) FROM assist_results") == 3
    assert metrics.payments.labels("assist")._value.get() == 1
    assert metrics.payment_amount.labels("assist")._value.get() == 150.0
    # a later bill does not move a credited order back
    fake.pay(order.order_number, "150.00", "Not authorized")
    await env.service.poll()
    assert (await env.get(order.order_number)).status == "paid"
    assert await env.balance(alice.id) == Decimal("150.00")


@pytest_twisted.ensureDeferred
async def test_one_row_per_bill_is_updated_in_place(make_env, fake, db):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id)
    b = fake.pay(order.order_number, "150.00", "in process", date=None)
    await env.service.poll()
    assert await db.fetchall("SELECT bill_number, status, order_date FROM assist_results") == [
        (b["bill"], "in process", None)]
    b["state"], b["date"] = "Authorized", datetime.datetime(2026, 11, 20, 13, 0)
    summary = await env.service.poll()
    assert summary.changed == 1 and summary.credited == (order.order_number,)
    assert await db.fetchall("SELECT bill_number, status, order_date FROM assist_results") == [
        (b["bill"], "Authorized", datetime.datetime(2026, 11, 20, 13, 0))]
    assert (await env.service.poll()).changed == 0


@pytest_twisted.ensureDeferred
async def test_two_pollers_credit_once(make_env, fake, db):
    clock = Clock()
    a, b = make_env(clock=clock), make_env(clock=clock, metrics_=Metrics())
    alice = await a.account()
    order = await a.order(alice.id, "99.90")
    fake.pay(order.order_number, "99.90", "Authorized")
    outcomes = sorted([await d for d in (a.poller.force(), b.poller.force())])
    assert outcomes == ["ok", "skipped"]  # one holds the lock, the other finds it taken or paced
    for env in (b, a, b):
        await allow_next_run(db)
        assert await env.poller.force() == "ok"
    assert await a.payments() == 1 and await a.balance(alice.id) == Decimal("99.90")
    assert await db.fetchval("SELECT runs FROM job_runs WHERE job = %s", (POLLER_JOB,)) == 4
    assert clock.getDelayedCalls() == []  # pollers never started: nothing scheduled


@pytest_twisted.ensureDeferred
async def test_amount_mismatch_credits_nothing_and_is_loud(make_env, fake, metrics, log_events):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    fake.pay(order.order_number, "15.00", "Authorized")
    for _ in range(2):
        summary = await env.service.poll()
    stored = await env.get(order.order_number)
    assert stored.status == "mismatch" and not stored.credited
    assert await env.payments() == 0 and await env.balance(alice.id) == 0
    loud = [e for e in log_events if e.get("reason") == "amount_mismatch"]
    assert len(loud) == 1 and loud[0]["log_level"].name == "error"  # once, not every poll
    assert loud[0]["order"] == order.order_number and loud[0]["paid"] == "15.00"
    assert gw_events(metrics, "amount_mismatch") == 1
    assert summary.mismatched == ()  # already known on the second poll


@pytest_twisted.ensureDeferred
async def test_unknown_orders_are_logged_once_and_ignored(make_env, fake, metrics, log_events):
    env = make_env()
    fake.pay("777777", "500.00", "Authorized")
    fake.pay("not-ours-either", "1.00", "Authorized")
    summary = await env.service.poll()
    assert sorted(summary.unknown_orders) == ["777777", "not-ours-either"]
    assert (await env.service.poll()).unknown_orders == ()
    assert await env.payments() == 0
    assert await env.db.fetchval("SELECT count(*) FROM assist_results") == 2
    assert len([e for e in log_events if e.get("reason") == "unknown_order"]) == 2
    assert gw_events(metrics, "unknown_order") == 2


@pytest_twisted.ensureDeferred
async def test_gateway_down_slow_or_garbage_credits_nothing_and_backs_off(
        make_env, fake, metrics, db):
    clock = Clock()
    env = make_env(clock=clock)
    alice = await env.account()
    order = await env.order(alice.id)
    fake.pay(order.order_number, "150.00", "Authorized")
    poller = env.poller
    interval = 600

    fake.modes = ["500"]
    assert await poller.force() == "error"
    assert poller.failures == 1 and poller.next_delay() == 2 * interval
    assert metrics.partner_requests.labels("assist", "server_error")._value.get() == 1

    await allow_next_run(db)
    fake.modes = ["hang"]
    arrived = fake.arrival()
    run = poller.force()
    await arrived
    assert not run.called
    clock.advance(59)
    assert not run.called
    clock.advance(1)  # the report's 60 s time-out, on the injected clock
    assert await run == "error"
    assert poller.failures == 2 and poller.next_delay() == 4 * interval
    # (PartnerHTTP counts this time-out as "unreachable": see the issue 5 report)
    assert sum(metrics.partner_requests.labels("assist", o)._value.get()
               for o in ("timeout", "unreachable")) == 1

    for mode in ("html", "garbage"):
        await allow_next_run(db)
        fake.modes = [mode]
        assert await poller.force() == "error"
    assert poller.failures == 4
    assert metrics.poller_runs.labels(POLLER_JOB, "error")._value.get() == 4
    assert await env.payments() == 0 and await env.balance(alice.id) == 0
    row = await db.fetchall("SELECT failures, last_ok, last_error FROM job_runs")
    assert row == [(4, False, "assist: results report: no Order Number / Payment No. /"
                              " Order State columns")]

    await allow_next_run(db)  # the gateway is back
    assert await poller.force() == "ok"
    assert poller.failures == 0 and poller.next_delay() == interval
    assert await env.payments() == 1 and await env.balance(alice.id) == Decimal("150.00")
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_an_error_with_the_gateway_answer(make_env, fake, db):
    env = make_env(password="wrong-pass")
    assert await env.poller.force() == "error"
    assert "Authorization failed" in await db.fetchval("SELECT last_error FROM job_runs")


@pytest_twisted.ensureDeferred
async def test_an_empty_answer_is_an_empty_report(make_env, fake):
    env = make_env()
    fake.modes = ["empty"]
    assert (await env.service.poll()).bills == 0


# -- two-stage --------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_two_stage_block_then_charge_credits_once(make_env, fake, db):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "300.00", two_stage=True)
    fake.pay(order.order_number, "300.00", "Preauthorized")
    await env.service.poll()
    blocked = await env.get(order.order_number)
    assert blocked.status == "blocked" and not blocked.credited
    assert blocked.bill_number == fake.bills_of(order.order_number)[0]["bill"]
    assert await env.balance(alice.id) == 0

    answer = await env.service.charge(order.order_number)
    assert answer["answer"]["Order State"] == "Captured"
    assert fake.requests[-1] == "/postauths/postauth.cfm"
    assert [b["state"] for b in fake.bills_of(order.order_number)] == ["Preauthorized", "Captured"]
    await env.service.poll()
    await env.service.poll()
    paid = await env.get(order.order_number)
    assert paid.status == "paid" and paid.gateway_status == "Captured"
    assert await env.balance(alice.id) == Decimal("300.00") and await env.payments() == 1

    with pytest.raises(orders.OrderError, match="is paid"):
        await env.service.charge(order.order_number)


@pytest_twisted.ensureDeferred
async def test_charge_after_a_failed_capture_uses_the_holding_bill(make_env, fake):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "300.00", two_stage=True)
    held = fake.pay(order.order_number, "300.00", "Preauthorized")
    fake.pay(order.order_number, "300.00", "Not captured")  # a capture that failed
    await env.service.poll()
    blocked = await env.get(order.order_number)
    assert (blocked.status, blocked.gateway_status) == ("blocked", "Not captured")
    await env.service.charge(order.order_number)  # the fake refuses any other bill
    captured = fake.bills_of(order.order_number)[-1]
    assert captured["state"] == "Captured" and captured["amount"] == held["amount"]
    await env.service.poll()
    assert await env.balance(alice.id) == Decimal("300.00")


@pytest_twisted.ensureDeferred
async def test_charge_errors(make_env, fake, db):
    env = make_env()
    alice = await env.account()
    single = await env.order(alice.id)
    with pytest.raises(orders.OrderError, match="no ASSIST order 42"):
        await env.service.charge("42")
    with pytest.raises(orders.OrderError, match="is new"):
        await env.service.charge(single.order_number)

    order = await env.order(alice.id, "300.00", two_stage=True)
    bill = fake.pay(order.order_number, "300.00", "Preauthorized")
    await env.service.poll()
    bill["state"] = "Captured"  # charged elsewhere: the gateway refuses
    with pytest.raises(PartnerRefused) as e:
        await env.service.charge(order.order_number)
    assert e.value.code == "AS400"

    fake.modes = ["html"]
    with pytest.raises(PartnerProtocolError):
        await env.service.charge(order.order_number)

    await db.execute("UPDATE gateway_orders SET created = now() - interval '15 days'"
                     " WHERE order_number = %s", (order.order_number,))
    with pytest.raises(orders.OrderError, match="14-day charge window"):
        await env.service.charge(order.order_number)


@pytest_twisted.ensureDeferred
async def test_void_a_block_and_refund_a_payment(make_env, fake, metrics, log_events):
    env = make_env()
    alice = await env.account()
    blocked = await env.order(alice.id, "300.00", two_stage=True)
    fake.pay(blocked.order_number, "300.00", "Preauthorized")
    paid = await env.order(alice.id, "100.00")
    fake.pay(paid.order_number, "100.00", "Authorized")
    await env.service.poll()
    assert await env.balance(alice.id) == Decimal("100.00")

    await env.service.cancel(blocked.order_number)
    await env.service.cancel(paid.order_number)
    assert fake.requests[-2:] == ["/rvr/rvr.cfm", "/rvr/rvr.cfm"]
    await env.service.poll()
    voided, refunded = await env.get(blocked.order_number), await env.get(paid.order_number)
    assert (voided.status, voided.gateway_status, voided.credited) == (
        "reversed", "Voided", False)
    assert (refunded.status, refunded.gateway_status, refunded.credited) == (
        "reversed", "Refunded", True)
    # the credit stays (the ledger is append-only): an operator is alerted
    assert await env.balance(alice.id) == Decimal("100.00") and await env.payments() == 1
    alarm = [e for e in log_events if e.get("reason") == "reversed_after_credit"]
    assert len(alarm) == 1 and alarm[0]["order"] == paid.order_number
    assert gw_events(metrics, "reversed_after_credit") == 1

    with pytest.raises(orders.OrderError, match="is reversed"):
        await env.service.cancel(blocked.order_number)


@pytest_twisted.ensureDeferred
async def test_refund_error_answer(make_env, fake):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id)
    b = fake.pay(order.order_number, "150.00", "Authorized")
    await env.service.poll()
    b["state"] = "Refunded"
    with pytest.raises(PartnerRefused) as e:
        await env.service.cancel(order.order_number)
    assert e.value.code == "AS400"


# -- the current generation -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_current_generation_polls_open_orders_and_credits_once(make_env, fake, db):
    env = make_env(generation="current")
    assert (await env.service.poll()).bills == 0 and fake.requests == []  # nothing open
    alice = await env.account()
    paid = await env.order(alice.id, "150.00")
    pending = await env.order(alice.id, "20.00")
    fake.pay(paid.order_number, "150.00", "Approved")
    fake.pay("999999", "1.00", "Approved")  # not ours: never asked for
    summary = await env.service.poll()
    assert summary.credited == (paid.order_number,)
    assert fake.requests == ["/orderstate/orderstate.cfm"] * 2  # paid + pending (no state yet)
    assert (await env.get(pending.order_number)).status == "new"
    fake.requests.clear()
    await env.service.poll()
    assert fake.requests == ["/orderstate/orderstate.cfm"]  # a paid order is no longer asked
    assert await env.payments() == 1 and await env.balance(alice.id) == Decimal("150.00")


@pytest_twisted.ensureDeferred
async def test_current_generation_reads_answers_that_declare_a_dtd(make_env, fake, db):
    """The real gateway opens each XML answer with a DTD of declarations: still credited."""
    fake.declares_dtd = True
    env = make_env(generation="current")
    alice = await env.account()
    paid = await env.order(alice.id, "150.00")
    fake.pay(paid.order_number, "150.00", "Approved")
    summary = await env.service.poll()
    assert summary.credited == (paid.order_number,)
    assert await env.payments() == 1 and await env.balance(alice.id) == Decimal("150.00")


@pytest_twisted.ensureDeferred
async def test_a_state_we_do_not_know_is_an_alarm_and_the_order_stays_open(
        make_env, fake, metrics, log_events):
    """A paid-looking state outside our tables ("PartialApproved"): loud, uncredited, asked again."""
    env = make_env(generation="current")
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    attempt = fake.pay(order.order_number, "150.00", "PartialApproved")
    await env.service.poll()
    assert (await env.get(order.order_number)).status == "unknown"
    assert await env.payments() == 0 and gw_events(metrics, "unknown_status") == 1
    loud = [e for e in log_events if e.get("reason") == "unknown_status"]
    assert len(loud) == 1 and loud[0]["log_level"].name == "warn"
    assert loud[0]["gateway_status"] == "PartialApproved"
    await env.service.poll()  # the same state again: said once
    assert gw_events(metrics, "unknown_status") == 1
    attempt["state"] = "Approved"
    assert (await env.service.poll()).credited == (order.order_number,)


@pytest_twisted.ensureDeferred
async def test_current_generation_keeps_asking_about_a_declined_order(make_env, fake):
    env = make_env(generation="current")
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    attempt = fake.pay(order.order_number, "150.00", "Declined")
    await env.service.poll()
    assert (await env.get(order.order_number)).status == "declined"
    attempt["state"] = "Approved"  # the payer tried again on the same order
    assert (await env.service.poll()).credited == (order.order_number,)
    assert await env.balance(alice.id) == Decimal("150.00")


@pytest_twisted.ensureDeferred
async def test_current_generation_two_stage_and_error_answers(make_env, fake):
    env = make_env(generation="current")
    alice = await env.account()
    order = await env.order(alice.id, "300.00", two_stage=True)
    fake.pay(order.order_number, "300.00", "Delayed")
    await env.service.poll()
    assert (await env.get(order.order_number)).status == "blocked"
    answer = await env.service.charge(order.order_number)
    assert answer["answer"]["orders"][0]["status"] == "Approved"
    await env.service.poll()
    assert (await env.get(order.order_number)).status == "paid"
    assert await env.balance(alice.id) == Decimal("300.00")

    other = await env.order(alice.id, "10.00", two_stage=True)
    b = fake.pay(other.order_number, "10.00", "Delayed")
    await env.service.poll()
    b["state"] = "Declined"
    with pytest.raises(PartnerRefused) as e:
        await env.service.charge(other.order_number)
    assert e.value.code == "5/104"
    b["state"] = "Delayed"
    await env.service.cancel(other.order_number)
    await env.service.poll()
    assert (await env.get(other.order_number)).status == "reversed"


@pytest_twisted.ensureDeferred
async def test_current_generation_refusals_are_loud_and_credit_nothing(
        make_env, fake, metrics, log_events):
    env = make_env(generation="current", password="wrong-pass")
    alice = await env.account()
    order = await env.order(alice.id)
    fake.pay(order.order_number, "150.00", "Approved")
    assert (await env.service.poll()).credited == ()
    refused = [e for e in log_events if e.get("reason") == "state_refused"]
    assert [(e["order"], e["code"]) for e in refused] == [(order.order_number, "5/103")]
    assert gw_events(metrics, "state_refused") == 1
    assert await env.payments() == 0
    assert "wrong-pass" not in json.dumps([e.get("log_format") for e in log_events])


# -- the push -----------------------------------------------------------------------------------------
async def post_form(env, path, fields):
    response = await env.web.post("http://smartyd" + path, data=fields)
    return response.code, (await response.content()).decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_push_with_a_good_check_value_forces_the_poll(make_env, fake, metrics):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    fake.pay(order.order_number, "150.00", "Authorized")
    env.poller.startService()  # on the test's Clock: only the push makes it run
    check = A.legacy_check_value("111111", order.order_number, "150.00", "RUB", "push-secret")
    arrived = fake.arrival()
    code, body = await post_form(env, "/payments/assist/result", {
        "Shop_IDP": "111111", "OrderNumber": order.order_number, "Total": "150.00",
        "Currency": "RUB", "Billnumber": "5431001", "Packetdate": "20.11.2026 12:00:00",
        "CheckValue": check.lower()})
    assert code == 200
    assert '<pushpaymentresult firstcode="0" secondcode="0">' in body
    assert "<billnumber>5431001</billnumber>" in body
    await arrived
    await env.poller.stopService()  # waits for the forced run
    assert await env.balance(alice.id) == Decimal("150.00")
    assert metrics.http_requests.labels("assist_result", "200")._value.get() == 1


@pytest_twisted.ensureDeferred
async def test_push_with_a_bad_check_value_is_refused(make_env, fake, metrics, log_events):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    env.poller.startService()
    fields = {"OrderNumber": order.order_number, "Total": "150.00", "Currency": "RUB"}
    for check in ("0" * 32, None):
        form = dict(fields, **({"CheckValue": check} if check else {}))
        code, body = await post_form(env, "/payments/assist/result", form)
        # the legacy protocol's answer: 200, firstcode 5 / secondcode 158 (CheckValue)
        assert code == 200 and 'firstcode="5" secondcode="158"' in body
        assert "<order>" not in body
    await env.poller.stopService()
    assert fake.requests == []  # no poll
    assert gw_events(metrics, "bad_check_value") == 2
    logged = json.dumps([{k: v for k, v in e.items() if k != "log_logger"}
                         for e in log_events], default=str)
    assert "push-secret" not in logged and "0" * 32 not in logged and "shoppass1" not in logged


@pytest_twisted.ensureDeferred
async def test_push_current_generation_vector(make_env, fake):
    env = make_env(generation="current", shop_id="111111", secret="secret")
    alice = await env.account()
    order = await env.order(alice.id, "4.00")
    env.poller.startService()
    good = A.current_check_value("secret", "111111", order.order_number, "4.00", "RUB",
                                 "Approved")
    form = {"ordernumber": order.order_number, "orderamount": "4.00", "ordercurrency": "RUB",
            "orderstate": "Approved", "billnumber": "1.1", "packetdate": "x", "checkvalue": good}
    fake.pay(order.order_number, "4.00", "Approved")
    arrived = fake.arrival()
    assert (await post_form(env, "/payments/assist/result", form))[0] == 200
    await arrived
    await env.poller.stopService()
    assert await env.balance(alice.id) == Decimal("4.00")
    tampered = dict(form, orderamount="400.00")
    env.poller.startService()
    code, body = await post_form(env, "/payments/assist/result", tampered)
    assert code == 200 and 'firstcode="5" secondcode="158"' in body
    await env.poller.stopService()


# -- the order endpoint ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_order_endpoint(make_env, metrics):
    env = make_env()
    alice = await env.account(password="s3cret")
    response = await env.web.post(
        "http://smartyd/payments/assist/order",
        data=json.dumps({"login": "alice", "password": "s3cret", "amount": 150.5,
                         "comment": "Интернет"}).encode(),
        headers={"content-type": "application/json"})
    assert response.code == 200
    out = json.loads(await response.content())
    number = out["order"]["order_number"]
    assert out["order"]["account_id"] == alice.id and out["order"]["amount"] == "150.50"
    assert out["form"]["url"] == "https://test.assist.ru/shops/purchase.cfm"
    assert out["form"]["charset"] == "windows-1251"
    assert out["form"]["fields"]["Order_IDP"] == number
    assert out["form"]["fields"]["Subtotal_P"] == "150.50"
    assert (await env.get(number)).status == "new"

    for body, code in [
        ({"login": "alice", "password": "wrong", "amount": "1.00"}, 403),
        ({"login": "nobody", "password": "x", "amount": "1.00"}, 403),
        ({"login": "alice", "password": "s3cret", "amount": "-1"}, 400),
        ({"login": "alice", "password": "s3cret", "amount": "1.001"}, 400),
        ({"login": "alice", "password": "s3cret", "amount": "NaN"}, 400),
        ({"login": "alice", "password": "s3cret"}, 400),
        ({"login": "alice", "password": "s3cret", "amount": "1", "comment": "😀"}, 400),
    ]:
        response = await env.web.post("http://smartyd/payments/assist/order", data=body)
        assert response.code == code, body
        await response.content()
    assert await env.db.fetchval("SELECT count(*) FROM gateway_orders") == 1
    assert metrics.http_requests.labels("assist_order", "403")._value.get() == 2


# -- wiring -----------------------------------------------------------------------------------------------
def test_install_mounts_only_enabled_gateways(metrics):
    def app(**sections):
        return build_app(make_config(**sections), reactor=reactor, db=None, metrics=metrics)

    def gateway_mounts(built):
        return [prefix for feature in built.features.values() for prefix, _ in feature.mounts
                if prefix.startswith(("/payments/assist", "/payments/payture", "/billing"))]

    off = app()
    assert gateway_mounts(off) == []
    assert not any(isinstance(s, (HTTPClientService, Poller)) for s in off.services)

    both = app(assist=SETTINGS, payture={"enabled": True, "host": "https://sandbox3.payture.com",
                                         "merchant_pay_key": "MerchantPay"})
    assert gateway_mounts(both) == [
        "/payments/assist", "/payments/payture", "/billing/payment/payture"]
    assert isinstance(both.services[0], HTTPClientService)
    [poller] = [s for s in both.services if isinstance(s, Poller)]
    assert poller.job == POLLER_JOB and poller.interval == 600

    only_payture = app(payture={"enabled": True, "host": "https://sandbox3.payture.com",
                                "merchant_pay_key": "MerchantPay"})
    assert gateway_mounts(only_payture) == ["/payments/payture", "/billing/payment/payture"]

    with pytest.raises(ConfigError, match=r"\[assist\] login"):
        make_config(assist={**SETTINGS, "login": ""})
    with pytest.raises(ConfigError, match=r"\[payture\] merchant_pay_key"):
        make_config(payture={"enabled": True, "host": "https://x.payture.com"})
    with pytest.raises(ConfigError, match="poll_interval"):
        make_config(assist={**SETTINGS, "poll_interval": 599})


def test_client_repr_never_shows_secrets():
    env_cfg = assist_config(password="very-secret-pass").assist
    client = A.make_client(None, env_cfg)
    assert "very-secret-pass" not in repr(client) and "shoplogin" not in repr(client)


# -- smartyd-admin ----------------------------------------------------------------------------------------
@pytest.fixture
def admin(tmp_path, pg_dsn):
    cfg = tmp_path / "smartyd.toml"
    cfg.write_text(
        f'[database]\ndsn = "{pg_dsn}"\n[log]\nfile = "{tmp_path}/smartyd.jsonl"\n'
        '[assist]\nenabled = true\nshop_id = "111111"\nlogin = "shoplogin"\n'
        'password = "shoppass1"\n'
    )

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "smartyd.admin", "--config", str(cfg), *args],
            capture_output=True, text=True, timeout=60,
        )
        out = json.loads(proc.stdout) if proc.returncode == 0 else None
        return proc.returncode, out, proc.stderr

    return run


@pytest_twisted.ensureDeferred
async def test_admin_order_show_and_errors(db, admin):
    alice = await db.run(ledger.create_account, "alice", "")
    code, out, err = admin("assist", "order", "--account", str(alice.id), "--amount", "150",
                           "--two-stage", "--comment", "Оплата")
    assert code == 0, err
    number = out["order"]["order_number"]
    assert out["order"]["two_stage"] is True and out["order"]["amount"] == "150.00"
    assert out["form"]["fields"]["Delay"] == "1" and out["form"]["fields"]["Comment"] == "Оплата"
    code, shown, _ = admin("assist", "show", number)
    assert code == 0 and shown["status"] == "new" and shown["bills"] == []
    for args, message in [
        (("assist", "charge", number), f"ASSIST order {number} is new"),
        (("assist", "cancel", "424242"), "no ASSIST order 424242"),
        (("assist", "order", "--account", "999", "--amount", "1"), "no account 999"),
        (("assist", "order", "--account", str(alice.id), "--amount", "0"), "positive"),
    ]:
        code, out, err = admin(*args)
        assert code != 0 and out is None, args
        assert err.startswith("smartyd-admin: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


# -- the push credits at once ----------------------------------------------------------------------------
FORM = "application/x-www-form-urlencoded"


async def post_raw(env, body: bytes, content_type: str = FORM):
    response = await env.web.post("http://smartyd/payments/assist/result", data=body,
                                  headers={"content-type": content_type})
    return response.code, (await response.content()).decode("cp1251")


async def sources(db):
    return await db.fetchall("SELECT bill_number, status, source FROM assist_results"
                             " ORDER BY bill_number")


@pytest_twisted.ensureDeferred
async def test_a_valid_legacy_push_credits_at_once_and_the_report_confirms(
        make_env, fake, metrics, db):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    assert await env.poller.force() == "ok"  # the report ran just now: pushes are paced out
    env.poller.startService()
    fake.requests.clear()
    b = fake.pay(order.order_number, "150.00", "Authorized")
    for _ in range(2):  # the gateway repeats a push; a repeat credits nothing
        code, body = await post_raw(env, fake.legacy_push(b, "push-secret"))
        assert code == 200 and '<pushpaymentresult firstcode="0" secondcode="0">' in body
        assert f"<billnumber>{b['bill']}</billnumber>" in body
        assert await env.balance(alice.id) == Decimal("150.00")  # credited by the push itself
    await env.poller.stopService()
    assert fake.requests == []  # no report was fetched for it
    assert await env.payments() == 1 and gw_events(metrics, "credited") == 1
    stored = await env.get(order.order_number)
    assert (stored.status, stored.gateway_status, stored.bill_number) == (
        "paid", "Authorized", b["bill"])
    assert await sources(db) == [(b["bill"], "Authorized", "push")]
    # the report poll confirms the same bill later: now the gateway's own word, no second credit
    await allow_next_run(db)
    assert await env.poller.force() == "ok"
    assert await sources(db) == [(b["bill"], "Authorized", "report")]
    assert await env.payments() == 1 and await env.balance(alice.id) == Decimal("150.00")
    assert gw_events(metrics, "credited") == 1


@pytest_twisted.ensureDeferred
async def test_a_valid_current_push_asks_for_that_order_and_credits_at_once(
        make_env, fake, db):
    env = make_env(generation="current")
    alice = await env.account()
    order = await env.order(alice.id, "4.00")
    other = await env.order(alice.id, "5.00")  # open as well: not asked about
    b = fake.pay(order.order_number, "4.00", "Approved")
    code, body = await post_raw(env, fake.current_push(b, "push-secret"))
    assert code == 200 and 'firstcode="0" secondcode="0"' in body
    assert fake.requests == ["/orderstate/orderstate.cfm"]  # one order's state, no poll
    assert await env.balance(alice.id) == Decimal("4.00")
    assert await sources(db) == [(b["bill"], "Approved", "report")]
    # the gateway cannot answer right now: the push (its CheckValue signs the state) decides
    c = fake.pay(other.order_number, "5.00", "Approved")
    fake.modes = ["500"]
    code, body = await post_raw(env, fake.current_push(c, "push-secret"))
    assert code == 200 and 'firstcode="0"' in body
    assert await env.balance(alice.id) == Decimal("9.00") and await env.payments() == 2
    assert (await env.get(other.order_number)).status == "paid"


@pytest_twisted.ensureDeferred
async def test_a_push_the_report_contradicts_is_an_alarm(make_env, fake, metrics, log_events):
    # the legacy CheckValue does not sign Status: a replayed refusal with its Status changed
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    b = fake.pay(order.order_number, "150.00", "Not authorized")
    code, _ = await post_raw(env, fake.legacy_push(b, "push-secret", Status="Authorized"))
    assert code == 200 and await env.balance(alice.id) == Decimal("150.00")
    for _ in range(2):
        await env.service.poll()
    stored = await env.get(order.order_number)
    assert (stored.status, stored.gateway_status) == ("paid", "Not authorized")
    alarm = [e for e in log_events if e.get("reason") == "unconfirmed_credit"]
    assert len(alarm) == 1 and alarm[0]["log_level"].name == "error"
    assert gw_events(metrics, "unconfirmed_credit") == 1
    assert await env.payments() == 1


# -- currency ---------------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_bill_in_another_currency_credits_nothing_and_is_loud(
        make_env, fake, metrics, log_events):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "160.00")
    fake.pay(order.order_number, "160.00", "Authorized", currency="USD")
    for _ in range(2):
        await env.service.poll()
    stored = await env.get(order.order_number)
    assert stored.status == "mismatch" and not stored.credited and stored.currency == "RUB"
    loud = [e for e in log_events if e.get("reason") == "currency_mismatch"]
    assert len(loud) == 1 and loud[0]["log_level"].name == "error"
    assert (loud[0]["paid"], loud[0]["paid_currency"], loud[0]["currency"]) == (
        "160.00", "USD", "RUB")
    assert gw_events(metrics, "currency_mismatch") == 1
    # pushed: the push is genuine (acknowledged) and credits nothing either
    pushed = await env.order(alice.id, "160.00")
    b = fake.pay(pushed.order_number, "160.00", "Authorized", currency="USD")
    code, body = await post_raw(env, fake.legacy_push(b, "push-secret"))
    assert code == 200 and 'firstcode="0"' in body
    assert (await env.get(pushed.order_number)).status == "mismatch"
    assert gw_events(metrics, "currency_mismatch") == 2
    assert await env.payments() == 0 and await env.balance(alice.id) == 0


# -- the push's charset and answers -----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_genuine_push_in_cp1251_is_accepted(make_env, fake, db):
    env = make_env()
    alice = await env.account()
    order = await env.order(alice.id, "150.00")
    b = fake.pay(order.order_number, "150.00", "Authorized", comment="Оплата интернета")
    body = fake.legacy_push(b, "push-secret")
    assert b"%C8%E2%E0%ED%EE%E2" in body  # "Иванов" in cp1251, not UTF-8
    for content_type in (FORM, FORM + "; charset=windows-1251"):
        code, answer = await post_raw(env, body, content_type)
        assert code == 200 and 'firstcode="0" secondcode="0"' in answer, content_type
    assert await env.balance(alice.id) == Decimal("150.00") and await env.payments() == 1
    assert await db.fetchval("SELECT details->>'comment' FROM assist_results") == \
        "Оплата интернета"
    assert "Иванов" not in json.dumps(await db.fetchval("SELECT details FROM assist_results"),
                                      ensure_ascii=False)  # no names kept


@pytest_twisted.ensureDeferred
async def test_a_push_for_another_shop_is_refused_with_5_100(make_env, fake, metrics):
    for generation in ("legacy", "current"):
        env = make_env(generation=generation)
        alice = await env.account(login=f"alice-{generation}")
        order = await env.order(alice.id, "150.00")
        b = fake.pay(order.order_number, "150.00",
                     "Authorized" if generation == "legacy" else "Approved")
        if generation == "legacy":  # signed right, but for shop 222222
            body = fake.legacy_push(b, "push-secret", shop_id="222222")
        else:
            body = fake.current_push(b, "push-secret", merchant_id="222222")
        code, answer = await post_raw(env, body)
        assert code == 200 and 'firstcode="5" secondcode="100"' in answer, generation
        assert "<order>" not in answer
        assert await env.balance(alice.id) == 0
    assert fake.requests == [] and gw_events(metrics, "wrong_shop") == 2

"""
The Billing API's wire, pure: the request signature
(smartyd/billing_api/signature.py) and the request parameters
(smartyd/billing_api/params.py) as the public clients send them -- precise
vectors for each shape, Hypothesis for the parsers.  No database:
bench/mutants.sh judges the two modules' mutants with these (and the pure
tests in tests/test_billing_api.py).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartyd.billing_api import signature
from smartyd.billing_api.params import (FALSE, NOT_GIVEN, TRUE, FieldError, Params, parse_bool,
                                        parse_ids)


def refusal(call) -> tuple[str, str, str]:
    with pytest.raises(FieldError) as caught:
        call()
    e = caught.value
    return e.field, e.message, str(e)


def test_the_value_sets():
    assert TRUE == {"1", "true", "True", "TRUE", "on", "yes"}
    assert FALSE == {"0", "false", "False", "FALSE", "off", "no"}
    assert NOT_GIVEN == {"", "-1"}


def test_pairs_keep_their_order_and_the_last_value_counts():
    p = Params([("a", "1"), ("b", "x"), ("a", "2")])
    assert p.pairs == [("a", "1"), ("b", "x"), ("a", "2")]
    assert "a" in p and "b" in p and "c" not in p
    assert (p.raw("a"), p.raw("b"), p.raw("c")) == ("2", "x", None)
    assert Params([]).raw("a") is None


def test_text():
    p = Params([("name", "Иван"), ("e", "")])
    assert p.text("name") == "Иван" and p.text("name", 4) == "Иван"
    assert p.text("e", 0) == "" and p.text("missing", 1) is None
    assert refusal(lambda: p.text("name", 3)) \
        == ("name", "at most 3 characters", "name: at most 3 characters")


@pytest.mark.parametrize("sent, ref", [
    ("abc", "abc"), (" abc ", "abc"), ("-1", None), (" -1 ", None), ("", None), ("  ", None),
    ("0", "0"), ("-2", "-2"),
])
def test_ref(sent, ref):
    assert Params([("x", sent)]).ref("x") == ref
    assert Params([]).ref("x") is None


def test_ident():
    assert Params([("id", "42")]).ident("id") == 42
    assert Params([("id", " 007 ")]).ident("id") == 7
    assert Params([("id", "9" * 18)]).ident("id") == 10**18 - 1
    assert Params([("id", "-1")]).ident("id") is None
    assert Params([]).ident("id") is None
    for bad in ("1" * 19, "4.2", "x", "-5", "1e3", "²", "١١", "4\n2"):
        assert refusal(lambda: Params([("id", bad)]).ident("id")) \
            == ("id", "not an id", "id: not an id")


@pytest.mark.parametrize("sent, value", [
    ("1", True), ("true", True), ("True", True), ("TRUE", True), ("on", True), ("yes", True),
    (" 1 ", True), ("0", False), ("false", False), ("False", False), ("FALSE", False),
    ("off", False), ("no", False), ("\tno\n", False),
])
def test_booleans(sent, value):
    assert parse_bool("b", sent) is value
    assert Params([("b", sent)]).boolean("b") is value


def test_boolean_not_given_and_refused():
    assert Params([]).boolean("b") is None
    assert Params([]).boolean("b", True) is True
    assert Params([("b", "")]).boolean("b", False) is False
    for bad in ("2", "yes!", "tRue", "[1]", "-1", " "):
        assert refusal(lambda: Params([("b", bad)]).boolean("b")) \
            == ("b", "not a boolean (0/1, true/false)", "b: not a boolean (0/1, true/false)")


def test_integer():
    assert Params([("n", "42")]).integer("n") == 42
    assert Params([("n", " -7 ")]).integer("n") == -7
    assert Params([("n", "-" + "9" * 18)]).integer("n") == -(10**18 - 1)
    assert Params([]).integer("n") is None and Params([]).integer("n", 5) == 5
    assert Params([("n", " ")]).integer("n", 3) == 3
    for bad in ("1" * 19, "4.2", "x", "--1", "+1", "1 2", "²", "١١", "1\n2"):
        assert refusal(lambda: Params([("n", bad)]).integer("n")) \
            == ("n", "not an integer", "n: not an integer")


@pytest.mark.parametrize("sent, ids", [
    ("[1, 2, 3]", [1, 2, 3]), ("1,2,3", [1, 2, 3]), ("[]", []), ("", []), ("7", [7]),
    (" [ 4 ,5 ] ", [4, 5]), ("['1', \"2\"]", [1, 2]), ("1,,2,", [1, 2]),
    ("[" + "9" * 18 + "]", [10**18 - 1]), ("0", [0]),
])
def test_ids(sent, ids):
    assert parse_ids("g", sent) == ids
    assert Params([("g", sent)]).ids("g") == ids


def test_ids_repeated_or_with_brackets_in_the_key():
    p = Params([("g", "1"), ("g[]", "2"), ("g", "[3, 4]"), ("g[]", "5"), ("h", "9")])
    assert p.ids("g") == [1, 3, 4, 2, 5]
    assert p.ids("missing") == []
    for bad in ("[1, x]", "1;2", "-1", "1.5", "1" * 19, "[[1]]", "²", "[١]", "X1", "1X"):
        assert refusal(lambda: parse_ids("g", bad)) \
            == ("g", "not a list of ids", "g: not a list of ids")


def test_day():
    assert Params([("d", "2026-03-01")]).day("d") == "2026-03-01"
    assert Params([("d", " 2026-03-01 12:30:00 ")]).day("d") == "2026-03-01"
    assert Params([("d", "2026-03-01T23:59:59")]).day("d") == "2026-03-01"
    assert Params([]).day("d") is None and Params([("d", " ")]).day("d") is None
    for bad in ("2026-02-30", "01.03.2026", "x", "2026-3-1"):
        assert refusal(lambda: Params([("d", bad)]).day("d")) \
            == ("d", "not a date (yyyy-mm-dd)", "d: not a date (yyyy-mm-dd)")


@pytest.mark.parametrize("sent, amount", [
    ("150.50", "150.50"), ("150.5", "150.50"), ("150", "150.00"), (" 7 ", "7.00"),
    ("-3.25", "-3.25"), ("0", "0.00"), ("999999999999.99", "999999999999.99"),
])
def test_amounts(sent, amount):
    got = Params([("a", sent)]).amount("a")
    assert got == Decimal(amount) and str(got) == amount


def test_amount_default_and_refusals():
    assert str(Params([]).amount("a")) == "0.00"
    assert str(Params([("a", "")]).amount("a", "5")) == "5.00"
    assert str(Params([("a", " ")]).amount("a", "1.5")) == "1.50"
    message = "not an amount (digits, '.', at most 2 decimals)"
    for bad in ("1.005", "1,50", "1e3", "x", "1234567890123", ".5", "1.", "+1", "--1", "١٢",
                "1\n.5"):
        assert refusal(lambda: Params([("a", bad)]).amount("a")) \
            == ("a", message, f"a: {message}")


def test_json_object():
    assert Params([("j", '{"a": [1, 2]}')]).json_object("j") == {"a": [1, 2]}
    assert Params([("j", " {} ")]).json_object("j") == {}
    assert Params([]).json_object("j") is None and Params([("j", "")]).json_object("j") is None
    assert refusal(lambda: Params([("j", "{")]).json_object("j")) \
        == ("j", "not JSON", "j: not JSON")
    for other in ("[1]", "1", '"x"', "null"):
        assert refusal(lambda: Params([("j", other)]).json_object("j")) \
            == ("j", "not a JSON object", "j: not a JSON object")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**18 - 1), max_size=6), st.booleans(), st.booleans())
def test_ids_round_trip_in_every_shape(ids, brackets, quotes):
    text = ", ".join(f"'{i}'" if quotes else str(i) for i in ids)
    sent = f"[{text}]" if brackets else text
    assert parse_ids("g", sent) == ids
    assert Params([("g", str(i)) for i in ids]).ids("g") == ids


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_parsers_answer_or_refuse_with_the_field(value):
    p = Params([("f", value)])
    for parse in (p.ident, p.boolean, p.integer, p.ids, p.day, p.amount, p.json_object,
                  lambda n: p.text(n, 10)):
        try:
            parse("f")
        except FieldError as e:
            assert e.field == "f" and str(e) == f"f: {e.message}"


# -- the signature ----------------------------------------------------------------------------
def test_sign_leaves_the_signature_out():
    pairs = [("client_id", "1"), ("b", "2")]
    expected = signature.digest("b:2;client_id:1;key")
    assert signature.sign(pairs, "key") == expected
    assert signature.sign(pairs + [("signature", "abc")], "key") == expected
    assert signature.sign([("signature", "abc")] + pairs, "key") == expected
    assert signature.verify(pairs + [("signature", "x")], "key", expected)


def test_a_signature_that_is_not_ascii_is_refused_not_raised():
    pairs = [("client_id", "1")]
    good = signature.sign(pairs, "key")
    assert signature.verify(pairs, "key", " " + good.upper() + "\n")
    for bad in ("ä" * 32, good[:-1] + "ё", "", "\ud800" * 32):
        assert signature.verify(pairs, "key", bad) is False

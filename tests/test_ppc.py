import pytest
from hypothesis import given, strategies as st

from smartyd import ppc

VECTORS = {1: "11", 10: "101", 42: "426", 99: "998", 123: "1236", 1009: "10090",
           4567: "45672", 5907: "59071"}


@pytest.mark.parametrize("account_id,code", sorted(VECTORS.items()))
def test_vectors(account_id, code):
    assert ppc.encode(account_id) == code
    assert ppc.decode(code) == account_id


@given(st.integers(min_value=1, max_value=10**17))
def test_round_trip(account_id):
    assert ppc.decode(ppc.encode(account_id)) == account_id


@given(st.integers(min_value=1, max_value=10**17), st.integers(min_value=1, max_value=9))
def test_wrong_check_digit_is_refused(account_id, delta):
    code = ppc.encode(account_id)
    wrong = code[:-1] + str((int(code[-1]) + delta) % 10)
    with pytest.raises(ppc.BadPaymentCode):
        ppc.decode(wrong)


@pytest.mark.parametrize("bad", ["", "5", "abc", "12a", " 11", "11 ", "0011", "١١", "-11",
                                 "1" * 25, "5907.1"])
def test_malformed(bad):
    with pytest.raises(ppc.BadPaymentCode):
        ppc.decode(bad)


@given(st.text(max_size=30))
def test_decode_never_crashes(s):
    try:
        account_id = ppc.decode(s)
    except ppc.BadPaymentCode:
        return
    assert ppc.encode(account_id) == s


@pytest.mark.parametrize("bad, message", [
    ("", "a payment code is ASCII digits only"),
    ("12a", "a payment code is ASCII digits only"),
    ("١١", "a payment code is ASCII digits only"),
    ("5", "a payment code has 2 to 19 digits"),
    ("1" * 19 + "9", "a payment code has 2 to 19 digits"),  # 20 digits, right check digit
    ("0011", "a payment code does not start with 0"),
    ("427", "wrong check digit"),
])
def test_refusals_say_why(bad, message):
    with pytest.raises(ppc.BadPaymentCode) as caught:
        ppc.decode(bad)
    assert str(caught.value) == message


def test_the_longest_code_and_the_smallest_ids():
    assert ppc.decode("1" * 18 + "8") == int("1" * 18)
    assert ppc.check_digit(0) == 0 and ppc.check_digit(1) == 1
    for bad in (0, -1):
        with pytest.raises(ValueError) as caught:
            ppc.encode(bad)
        assert str(caught.value) == "account ids are positive"
    with pytest.raises(ValueError) as caught:
        ppc.check_digit(-1)
    assert str(caught.value) == "account ids are positive"

"""What the console reads: the search and the customer card (plain SQL, read only)."""

from __future__ import annotations

from smartyd import catalog, ledger, ppc
from smartyd.gateways import cards
from smartyd.db import Tx

MAX_QUERY = 100


async def search(tx: Tx, query: str) -> list[dict]:
    """
    Customers a query names: a customer id, a payment code, an account login,
    a phone (its digits), an e-mail, a device uid, a payment's external id
    (OSMP ``txn_id``, ...) or a gateway order number (ASSIST, Payture).
    Each match once, with how it was found; at most 50.
    """
    q = query.strip()[:MAX_QUERY]
    if not q:
        return []
    number = int(q) if q.isdigit() and len(q) < 19 else None
    try:
        code = ppc.decode(q)
    except ppc.BadPaymentCode:
        code = None
    digits = "".join(c for c in q if c.isdigit())
    phone = digits if len(digits) >= 6 and all(c in "+0123456789 ()-" for c in q) else None
    return await tx.fetchdicts(
        "SELECT DISTINCT ON (m.customer_id) m.customer_id, m.how, c.name, c.balance"
        " FROM ("
        "  SELECT id AS customer_id, 'id' AS how, 1 AS rank FROM customers WHERE id = %(number)s"
        "  UNION ALL SELECT id, 'ppc', 2 FROM customers WHERE id = %(code)s"
        "  UNION ALL SELECT customer_id, 'login', 3 FROM accounts WHERE login = %(q)s"
        "  UNION ALL SELECT p.customer_id, 'payment ' || p.provider, 4 FROM payments p"
        "   WHERE p.external_id = %(q)s"
        "  UNION ALL SELECT a.customer_id, 'order ' || o.provider, 5 FROM gateway_orders o"
        "   JOIN accounts a ON a.id = o.account_id WHERE o.order_number = %(q)s"
        "  UNION ALL SELECT a.customer_id, 'device', 6 FROM devices d"
        "   JOIN accounts a ON a.id = d.account_id WHERE d.uid = %(q)s"
        "  UNION ALL SELECT id, 'e-mail', 7 FROM customers WHERE lower(email) = lower(%(q)s)"
        "  UNION ALL SELECT id, 'phone', 8 FROM customers"
        "   WHERE %(phone)s::text IS NOT NULL AND regexp_replace(phone, '[^0-9]', '', 'g')"
        "   = %(phone)s"
        " ) m JOIN customers c ON c.id = m.customer_id"
        " ORDER BY m.customer_id, m.rank LIMIT 50",
        {"q": q, "number": number, "code": code, "phone": phone})


async def providers(tx: Tx) -> list[str]:
    """The providers our payments name (the reconciliation form's choices)."""
    return [r[0] for r in await tx.fetchall("SELECT DISTINCT provider FROM payments ORDER BY 1")]


async def card(tx: Tx, customer_id: int, now: float, period: dict) -> dict | None:
    """
    Everything the customer card shows, or None for no such customer;
    ``period``: the statement's L{ledger.statement} arguments (start, end,
    limit, before).
    """
    customer = await ledger.get_customer(tx, customer_id)
    if customer is None:
        return None
    accounts = await ledger.customer_accounts(tx, customer_id)
    ids = [a.id for a in accounts]
    tariffs = await catalog.list_tariffs(tx)
    names = {t["id"]: t["name"] for t in tariffs}
    return {
        "customer": customer,
        "accounts": accounts,
        "limits": {r["id"]: r for r in await tx.fetchdicts(
            "SELECT id, max_sessions, max_devices FROM accounts WHERE id = ANY(%s)", (ids,))},
        "devices": await tx.fetchdicts(
            "SELECT id, uid, account_id, model, serial, created FROM devices"
            " WHERE account_id = ANY(%s) ORDER BY account_id, uid", (ids,)),
        # The devices' TV Middleware sessions (never their key hashes).
        "tv_sessions": await tx.fetchdicts(
            "SELECT account_id, device_uid, device, ip, created, last_seen FROM tvmw_sessions"
            " WHERE account_id = ANY(%s) ORDER BY account_id, device_uid, created", (ids,)),
        "subscriptions": [{**sub, "tariff": names[sub["tariff_id"]]}
                          for sub in await catalog.customer_subscriptions(tx, customer_id)],
        "promise": await tx.fetchdict(
            "SELECT amount, due FROM promises WHERE customer_id = %s AND returned_at IS NULL",
            (customer_id,)),
        "statement": await ledger.statement(tx, customer_id, **period),
        "tariffs": tariffs,
        "sessions": await tx.fetchdicts(
            "SELECT account_id, session, to_timestamp(since) AS since,"
            " to_timestamp(expires) AS expires FROM session_leases"
            " WHERE account_id = ANY(%s) AND expires > %s ORDER BY account_id, since",
            (ids, now)),
        "cards": await cards.list_cards(tx, customer_id),
        "autopay": await cards.autopay_enabled(tx, customer_id),
        "outbox": await tx.fetchdicts(
            "SELECT provider, op, state, attempts, last_error, created, finished"
            " FROM partner_calls WHERE customer_id = %s ORDER BY id DESC LIMIT 50",
            (customer_id,)),
        "payments": await tx.fetchdicts(
            "SELECT p.provider, p.external_id, p.amount, p.created, p.external_date,"
            " r.state AS receipt FROM payments p LEFT JOIN receipt_jobs r ON r.payment_id = p.id"
            " WHERE p.customer_id = %s ORDER BY p.id DESC LIMIT 100", (customer_id,)),
    }

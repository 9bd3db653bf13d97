"""The console's texts in Russian and English (chosen by the browser's Accept-Language)."""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "smartyd console", "login": "Login", "password": "Password",
        "submit_login": "Log in", "logout": "Log out",
        "bad_login": "Wrong login or password, or too many failed attempts"
                     " (then wait 15 minutes).",
        "bad_csrf": "The form has expired or did not come from this console. Reload the page"
                    " and try again.",
        "expired": "Your session has ended; log in again.",
        "signed_in": "{login} ({role})",
        "search": "Search", "search_hint": "Customer id, payment code, login, phone, e-mail,"
                  " device uid, payment txn_id or order number",
        "find": "Find", "nothing_found": "Nothing found for “{q}”.", "found": "Found",
        "how": "Found by", "customer": "Customer", "name": "Name", "balance": "Balance",
        "no_customer": "No such customer.", "no_account": "No such account of this customer.",
        "ppc": "Payment code", "phone": "Phone", "email": "E-mail",
        "credit_limit": "Credit limit", "promise": "Promised payment",
        "promise_due": "{amount} until {due}", "none": "none",
        "accounts": "Accounts", "account": "Account", "status": "Status",
        "reason": "Reason", "active": "active", "blocked": "blocked",
        "block": "Block", "unblock": "Unblock", "needs": "needs the {role} role",
        "devices": "Devices", "uid": "Device uid", "model": "Model", "created": "Created",
        "subscriptions": "Subscriptions", "tariff": "Tariff", "paid_until": "Paid until",
        "state": "State", "statement": "Statement", "time": "Time", "amount": "Amount",
        "kind": "Kind", "cause": "Cause", "balance_after": "Balance after",
        "payments": "Payments", "provider": "Provider", "external_id": "External id",
        "receipt": "Receipt", "no_receipt": "no receipt",
        "audit": "Audit trail", "journal": "Audit journal", "actor": "Who", "action": "Action",
        "before": "Before", "after": "After", "filter": "Filter", "since": "From (date)",
        "until": "Until (date)",
        "money": "Credit or debit by hand", "credit": "Credit", "debit": "Debit",
        "direction": "Direction", "do_money": "Post",
        "need_reason": "Give a reason (up to 500 characters).",
        "bad_amount": "The amount must be positive, with at most two decimals.",
        "bad_date": "Dates are written YYYY-MM-DD.",
        "refused": "Refused: your role ({role}) may not do this; it needs the {needed} role.",
        "done_block": "Account {account} is blocked.",
        "done_unblock": "Account {account} is unblocked.",
        "done_money": "{amount} posted; the balance is now {balance}.",
        "repeated": "This form was submitted already; nothing was posted again.",
        "empty": "Nothing yet.", "operators": "Operators", "role": "Role",
        "disabled": "disabled", "enabled": "enabled", "create_operator": "Create an operator",
        "create": "Create", "disable": "Disable",
        "operator_created": "Operator {login} is created. Password (shown this once): {password}",
        "operator_disabled": "Operator {login} is disabled.",
        "bad_operator": "Check the form: {why}.", "not_found": "Not found.",
        "grant_promise": "Grant a promised payment", "days": "Days",
        "done_promise": "A promised payment of {amount} is granted until {due}.",
        "assign_tariff": "Assign a tariff", "assign": "Assign", "remove": "Remove",
        "whole_customer": "the whole customer",
        "done_assign": "Tariff {tariff} is assigned.", "done_remove": "Tariff {tariff} is removed.",
        "new_password": "New password",
        "done_password": "The new password of {login} (shown this once): {password}",
        "unbind": "Unbind", "done_unbind": "Device {uid} is unbound.",
        "no_device": "No such device of this customer.", "not_done": "Not done: {why}.",
    },
    "ru": {
        "title": "Консоль smartyd", "login": "Логин", "password": "Пароль",
        "submit_login": "Войти", "logout": "Выйти",
        "bad_login": "Неверный логин или пароль, или слишком много неудачных попыток"
                     " (тогда подождите 15 минут).",
        "bad_csrf": "Форма устарела или отправлена не из консоли. Обновите страницу и"
                    " повторите.",
        "expired": "Сеанс завершён; войдите снова.",
        "signed_in": "{login} ({role})",
        "search": "Поиск", "search_hint": "Номер абонента, платёжный код, логин, телефон,"
                  " эл. почта, uid устройства, txn_id платежа или номер заказа",
        "find": "Найти", "nothing_found": "По запросу «{q}» ничего не найдено.",
        "found": "Найдено", "how": "Найден по", "customer": "Абонент", "name": "Имя",
        "balance": "Баланс", "no_customer": "Абонент не найден.",
        "no_account": "У абонента нет такой учётной записи.",
        "ppc": "Платёжный код", "phone": "Телефон", "email": "Эл. почта",
        "credit_limit": "Кредитный лимит", "promise": "Обещанный платёж",
        "promise_due": "{amount} до {due}", "none": "нет",
        "accounts": "Учётные записи", "account": "Учётная запись", "status": "Состояние",
        "reason": "Причина", "active": "активна", "blocked": "заблокирована",
        "block": "Заблокировать", "unblock": "Разблокировать", "needs": "нужна роль {role}",
        "devices": "Устройства", "uid": "uid устройства", "model": "Модель",
        "created": "Создано", "subscriptions": "Подписки", "tariff": "Тариф",
        "paid_until": "Оплачено до", "state": "Состояние", "statement": "Выписка",
        "time": "Время", "amount": "Сумма", "kind": "Вид", "cause": "Основание",
        "balance_after": "Баланс после", "payments": "Платежи", "provider": "Источник",
        "external_id": "Внешний номер", "receipt": "Чек", "no_receipt": "без чека",
        "audit": "Журнал изменений", "journal": "Журнал изменений", "actor": "Кто",
        "action": "Действие", "before": "До", "after": "После", "filter": "Отобрать",
        "since": "С (дата)", "until": "До (дата)",
        "money": "Ручное зачисление или списание", "credit": "Зачислить", "debit": "Списать",
        "direction": "Операция", "do_money": "Провести",
        "need_reason": "Укажите причину (до 500 символов).",
        "bad_amount": "Сумма должна быть положительной, не более двух знаков после запятой.",
        "bad_date": "Даты пишутся ГГГГ-ММ-ДД.",
        "refused": "Отказано: вашей роли ({role}) это не разрешено; нужна роль {needed}.",
        "done_block": "Учётная запись {account} заблокирована.",
        "done_unblock": "Учётная запись {account} разблокирована.",
        "done_money": "Проведено {amount}; баланс теперь {balance}.",
        "repeated": "Эта форма уже отправлялась; повторно ничего не проведено.",
        "empty": "Пока ничего.", "operators": "Операторы", "role": "Роль",
        "disabled": "отключён", "enabled": "действует", "create_operator": "Создать оператора",
        "create": "Создать", "disable": "Отключить",
        "operator_created": "Оператор {login} создан. Пароль (показывается один раз):"
                            " {password}",
        "operator_disabled": "Оператор {login} отключён.",
        "bad_operator": "Проверьте форму: {why}.", "not_found": "Не найдено.",
        "grant_promise": "Обещанный платёж", "days": "Дней",
        "done_promise": "Обещанный платёж {amount} предоставлен до {due}.",
        "assign_tariff": "Подключить тариф", "assign": "Подключить", "remove": "Отключить",
        "whole_customer": "весь абонент",
        "done_assign": "Тариф {tariff} подключён.", "done_remove": "Тариф {tariff} отключён.",
        "new_password": "Новый пароль",
        "done_password": "Новый пароль {login} (показывается один раз): {password}",
        "unbind": "Отвязать", "done_unbind": "Устройство {uid} отвязано.",
        "no_device": "У абонента нет такого устройства.", "not_done": "Не сделано: {why}.",
    },
}


def language(accept_language: bytes | None) -> str:
    """``ru`` when the browser's first preference is Russian, else ``en``."""
    first = (accept_language or b"").split(b",")[0].strip().lower()
    return "ru" if first.startswith(b"ru") else "en"


def texts(lang: str) -> dict[str, str]:
    return TEXTS[lang]

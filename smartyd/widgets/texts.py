"""The widgets' texts in Russian and English (``[widgets] language``)."""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "channels": "Channels", "signup": "Sign up", "cabinet": "Personal account",
        "epg": "TV guide", "payment": "Payment",
        "per_period": "{price} per {days} days", "no_channels": "No channels yet.",
        "name": "Name", "phone": "Phone", "email": "E-mail",
        "captcha_label": "Anti-robot check: {question} (type the sum)",
        "submit_signup": "Create my account",
        "signed_up": "Your account is ready. Write these down: they are shown only once.",
        "login": "Login", "password": "Password", "submit_login": "Log in",
        "logout": "Log out", "bad_login": "Wrong login or password.",
        "balance": "Balance", "statement": "Statement", "tariffs": "Tariffs",
        "connect": "Connect", "disconnect": "Disconnect", "connected": "connected",
        "bad_captcha": "The anti-robot answer is wrong; try the new question.",
        "too_many": "Too many sign-ups from your address; try again later.",
        "bad_csrf": "The form has expired or did not come from this page. Reload and try again.",
        "bad_input": "Please check the form: {why}.",
        "no_widget": "No such widget.", "on_air": "on air",
        "no_guide": "No programmes in the guide yet.",
        "amount": "Amount", "client_id": "Customer number", "payment_type": "Payment method",
        "pay": "Pay", "to_gateway": "Continue to the payment page",
        "not_offered": "The payment method {kind} is not offered here.",
        "no_customer": "No such customer.", "no_methods": "No payment method is configured.",
        "result": "Payment {order}: {amount}, {state}.", "credited": "credited",
        "pending": "not credited yet", "no_order": "No such payment.",
        "gateway_down": "The payment service is unavailable; try again later.",
        "tariff_changed": "Done.", "tariff_failed": "That tariff cannot be changed here.",
    },
    "ru": {
        "channels": "Каналы", "signup": "Регистрация", "cabinet": "Личный кабинет",
        "epg": "Телепрограмма", "payment": "Оплата",
        "per_period": "{price} за {days} дн.", "no_channels": "Каналов пока нет.",
        "name": "Имя", "phone": "Телефон", "email": "Эл. почта",
        "captcha_label": "Проверка от роботов: {question} (введите сумму)",
        "submit_signup": "Зарегистрироваться",
        "signed_up": "Учётная запись создана. Запишите данные: они показываются один раз.",
        "login": "Логин", "password": "Пароль", "submit_login": "Войти",
        "logout": "Выйти", "bad_login": "Неверный логин или пароль.",
        "balance": "Баланс", "statement": "Выписка", "tariffs": "Тарифы",
        "connect": "Подключить", "disconnect": "Отключить", "connected": "подключён",
        "bad_captcha": "Неверный ответ на проверку; ответьте на новый вопрос.",
        "too_many": "Слишком много регистраций с вашего адреса; попробуйте позже.",
        "bad_csrf": "Форма устарела или отправлена не с этой страницы. Обновите страницу.",
        "bad_input": "Проверьте форму: {why}.",
        "no_widget": "Виджет не найден.", "on_air": "в эфире",
        "no_guide": "Программы передач пока нет.",
        "amount": "Сумма", "client_id": "Номер абонента", "payment_type": "Способ оплаты",
        "pay": "Оплатить", "to_gateway": "Перейти к оплате",
        "not_offered": "Способ оплаты {kind} здесь не предлагается.",
        "no_customer": "Абонент не найден.", "no_methods": "Способы оплаты не настроены.",
        "result": "Платёж {order}: {amount}, {state}.", "credited": "зачислен",
        "pending": "ещё не зачислен", "no_order": "Платёж не найден.",
        "gateway_down": "Платёжный сервис недоступен; попробуйте позже.",
        "tariff_changed": "Готово.", "tariff_failed": "Этот тариф здесь изменить нельзя.",
    },
}


def texts(language: str) -> dict[str, str]:
    return TEXTS[language]

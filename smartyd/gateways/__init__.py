"""Payment gateways (ASSIST, Payture) -- placeholder until issue 5 lands."""


def install(parts) -> None:
    pass

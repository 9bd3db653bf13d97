"""Stream tokens -- placeholder until issue 4 lands."""


def install(parts) -> None:
    pass

"""OSMP (QIWI) terminal payments -- placeholder until issue 3 lands."""


def install(parts) -> None:
    pass

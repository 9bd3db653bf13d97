"""Dreamkas fiscalization -- placeholder until issue 6 lands."""


def install(parts) -> None:
    pass

"""The admin CLI's one error type: printed as one line, exit status 1."""


class AdminError(Exception):
    pass

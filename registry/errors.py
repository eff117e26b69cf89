"""The one error hierarchy raised by registry and jobs code; app/ maps each class to an HTTP status."""


class LorifoldError(Exception):
    """Base class; the message is shown to the caller and must say what to do."""


class NotFound(LorifoldError):
    pass


class Conflict(LorifoldError):
    pass


class InvalidInput(LorifoldError):
    pass


class TooLarge(LorifoldError):
    pass


class Forbidden(LorifoldError):
    pass

"""The exception family of the driver layer."""

from __future__ import annotations


class DeviceError(Exception):
    """A device did not do what laned asked, or cannot be reached.

    Carries what the field engineer needs: which device, what was attempted, and why
    it failed (register, port, bytes…) in ``detail``.
    """

    def __init__(self, device: str, what: str, detail: str = "") -> None:
        self.device = device
        self.what = what
        self.detail = detail
        msg = f"{device}: {what}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class DeviceTimeout(DeviceError):
    """The device did not answer in time."""


class DeviceOffline(DeviceError):
    """The device's link is down (port gone, connection refused, breaker open)."""


class ReadbackMismatch(DeviceError):
    """An output was written but reading it back gave a different state."""


class DeviceRejected(DeviceError):
    """The device answered, but with an error (a Modbus exception response).

    ``code`` is the Modbus exception code (2 = illegal data address, 4 = device failure,
    6 = device busy …): the device is alive, it refused this request.
    """

    def __init__(self, device: str, what: str, detail: str = "", *, code: int | None = None) -> None:
        super().__init__(device, what, detail)
        self.code = code


class UnexpectedReply(DeviceError):
    """An answer arrived that does not belong to the request (wrong function, address or
    length): a late answer to an earlier request, or a second master on the line."""

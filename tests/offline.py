"""A machine without a network, for tests: every name lookup or connection is refused and recorded."""

import errno
import socket


def refusal(attempts: list, what: str, error: type = OSError):
    """A stand-in for a network call that records (what, target) and fails as an unreachable network does."""
    def call(*args, **kwargs):
        attempts.append((what, args[1] if what == "connect" else (args[0] if args else None)))
        raise error(errno.ENETUNREACH, "network is unreachable (refused by the test)")
    return call


def refuse_network(patch, attempts: list) -> None:
    patch.setattr(socket, "getaddrinfo", refusal(attempts, "getaddrinfo", socket.gaierror))
    patch.setattr(socket, "create_connection", refusal(attempts, "create_connection"))
    patch.setattr(socket.socket, "connect", refusal(attempts, "connect"))

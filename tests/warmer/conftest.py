"""The proxy test fixtures (a real origin, the proxy on real ports) for warmer tests too."""

from tests.proxy.conftest import client, make_proxy, origin

__all__ = ["client", "make_proxy", "origin"]

"""Every Redis client of the proxy is built here: one server, or a Redis Cluster.

``cache.redis_url`` names one server (``redis://``, ``rediss://``,
``unix://``) or, as ``redis+cluster://host:port`` (``rediss+cluster://`` for
TLS), one node of a Redis Cluster: the client learns the other nodes and
which slots they serve from it, follows ``MOVED``/``ASK`` redirections, and
reads the topology again after a node fails.  The rest of the proxy sends the
same commands either way; what differs is confined to the helpers below:

- :func:`scan_batches`: SCAN of one server, or of every primary of a cluster
  in turn (each holds only its slots' keys);
- :class:`Subscriptions`: the pub/sub connection of a follower.  On a cluster
  a classic PUBLISH reaches every node, so a follower subscribes on a plain
  connection to one node, and on a failure moves on to the next node.  That
  keeps what the followers rely on: a dropped subscription surfaces as an
  error (they must read the state again, or flush their L1, since pub/sub
  keeps nothing for an absent subscriber) rather than being repaired out of
  sight, as redis-py's cluster pub/sub does.

A cluster client's pooled connections are handed out most recently released
first (see :func:`_ask_on_one_connection`): redis-py sends the ``ASKING``
of an ``ASK`` redirection and the redirected command as two commands, each
on a connection of the pool.

Which keys must share a slot (Lua scripts, transactions, multi-key commands)
is the caller's business: they use ``{...}`` hash tags (docs/operations.md,
"Redis Cluster").
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from warmer.sources import mask_url

#: A client of one server or of a cluster: the commands the proxy sends
#: are the same on both.
RedisClient: TypeAlias = Redis | RedisCluster

#: What a failed Redis command may raise.  A cluster client raises some of
#: its failures (no node reachable, a slot no node serves during a failover)
#: as RedisClusterException, which is not a RedisError; OSError covers
#: socket errors and timeouts that escape redis-py.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)

#: URL schemes naming a cluster, and the scheme of their nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SERVER_SCHEMES = ("redis", "rediss", "unix")


def _ask_on_one_connection() -> None:
    """Make a cluster node hand out the connection released last (LIFO).

    On an ASK redirection redis-py (8.2) awaits ``ASKING`` on one pooled
    connection of the target node, releases it, then sends the command on
    whichever connection the pool hands out next: the oldest free one.  On
    another connection the target ignores the ASKING and answers MOVED back
    to the source, which answers ASK again, until the client gives up
    ("TTL exhausted"): while a slot migrates, every key already moved is
    lost to a client with more than one connection to the target.  Nothing
    is awaited between the release of ASKING's connection and the next
    take, so taking the last one released puts the command right behind its
    ASKING.  Applied once, to the class: the node objects are built inside
    redis-py (on every topology refresh), out of reach of a client's options.
    """
    original = ClusterNode.acquire_connection
    if getattr(original, "_lifo", False):
        return

    def acquire_connection(node: ClusterNode) -> Connection:
        free = node._free
        if free:
            connection: Connection = free.pop()
            return connection
        return original(node)  # a new one, or MaxConnectionsError at the bound

    acquire_connection._lifo = True  # type: ignore[attr-defined]
    setattr(ClusterNode, "acquire_connection", acquire_connection)  # noqa: B010


_ask_on_one_connection()


def is_cluster_url(url: str) -> bool:
    """True when ``url`` names a Redis Cluster (``redis+cluster://``...)."""
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def check_redis_url(url: str) -> str:
    """``url`` when it names a server or a cluster; ValueError saying what is
    wrong (the URL shown with its password masked)."""
    masked = mask_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"not a URL: {masked!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in (*_SERVER_SCHEMES, *CLUSTER_SCHEMES):
        raise ValueError(
            "must be a redis://, rediss:// or unix:// URL, or redis+cluster:// or "
            f"rediss+cluster:// for a Redis Cluster, got {masked!r}"
        )
    if scheme in CLUSTER_SCHEMES:
        try:
            _ = parts.port  # raises for a port that is not a number in range
        except ValueError:
            raise ValueError(f"not a valid port in {masked!r}") from None
        if not parts.hostname:
            raise ValueError(f"a Redis Cluster URL names a node as host:port, got {masked!r}")
        # A cluster has database 0 alone (SELECT is refused).
        if parts.path not in ("", "/", "/0"):
            raise ValueError(
                f"a Redis Cluster has only database 0: drop {parts.path!r} from {masked!r}"
            )
    return url


def _node_url(url: str) -> str:
    """The cluster URL ``url`` as redis-py's plain scheme (``redis://``, ``rediss://``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[parts.scheme.lower()]))


def redis_client(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    max_connections: int | None = None,
    retry: Retry | None = None,
    health_check_interval: float = 0,
    pool_timeout: float | None = None,
) -> RedisClient:
    """A client of the server or cluster ``url`` names; it connects on first use.

    ``max_connections`` and ``retry`` (how a command is tried again after a
    connection error): None leaves redis-py's default.  ``pool_timeout``:
    with every connection of a server busy, wait up to this long for one (a
    blocking pool) rather than open more; a cluster has no blocking pool, so
    there ``max_connections`` bounds each node's connections and a command
    beyond them fails at once.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": health_check_interval,
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    if is_cluster_url(url):
        return RedisCluster.from_url(
            _node_url(url),
            **options,
            # The cluster's own retry: after a connection error it reads the
            # topology again before the next attempt, which is what finds a
            # promoted replica.  No backoff: an outage costs a request one
            # fast failure (then pass-through), never a wait.
            retry=retry if retry is not None else Retry(NoBackoff(), 1),
        )
    if retry is not None:
        options["retry"] = retry
    if pool_timeout is not None:
        pool = BlockingConnectionPool.from_url(url, timeout=pool_timeout, **options)
        return Redis.from_pool(pool)
    return Redis.from_url(url, **options)


async def scan_batches(
    client: RedisClient, *, match: str, count: int
) -> AsyncGenerator[list[bytes], None]:
    """The keys matching ``match``, a SCAN reply at a time: of the server, or
    of each primary of a cluster in turn.  Raises what the commands raise.

    A cluster's keys may move while it is scanned (a slot migrating, a
    failover): a key may then be seen twice or not at all, as SCAN allows
    for keys changing during a scan anyway.
    """
    if isinstance(client, RedisCluster):
        await client.initialize()
        for node in client.get_primaries():
            cursor = 0
            while True:
                # A cluster's SCAN answers a cursor per node asked.
                cursors: Any
                cursors, keys = await client.scan(
                    cursor, match=match, count=count, target_nodes=node
                )
                yield [_as_bytes(k) for k in keys]
                cursor = cursors[node.name]
                if cursor == 0:
                    break
        return
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=match, count=count)
        yield [_as_bytes(k) for k in keys]
        if cursor == 0:
            return


def _as_bytes(value: bytes | str) -> bytes:
    # Typed bytes | str by redis-py; bytes, as no client here decodes replies.
    return value if isinstance(value, bytes) else value.encode()


class Subscriptions:
    """Where a follower subscribes to a pub/sub channel.

    On one server: ``client`` itself (built without silent retries: a lost
    subscription must surface).  On a cluster: a plain client of one node,
    a random one first (a fleet's followers spread over the nodes), and the
    next one each time a subscription is made again (after a failure, the
    node may be gone); its timeouts and credentials are ``url``'s.
    """

    def __init__(self, client: RedisClient, url: str, *, timeout: float) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self._node_client: Redis | None = None
        self._turn: int | None = None

    async def pubsub(self) -> PubSub:
        """A new PubSub (not subscribed yet).  Raises what a Redis command raises."""
        client = self._client
        if not isinstance(client, RedisCluster):
            return client.pubsub(ignore_subscribe_messages=True)
        await client.initialize()
        nodes = sorted(client.get_nodes(), key=lambda n: n.name)
        if not nodes:
            raise RedisClusterException("the cluster lists no node to subscribe on")
        self._turn = random.randrange(len(nodes)) if self._turn is None else self._turn + 1
        node = nodes[self._turn % len(nodes)]
        await self.aclose()
        self._node_client = self._client_of(node)
        return self._node_client.pubsub(ignore_subscribe_messages=True)

    def _client_of(self, node: ClusterNode) -> Redis:
        parts = urlsplit(_node_url(self._url))
        host = f"[{node.host}]" if ":" in node.host else node.host
        userinfo, _, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}@{host}:{node.port}" if userinfo else f"{host}:{node.port}"
        return Redis.from_url(
            urlunsplit(parts._replace(netloc=netloc)),
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            max_connections=2,
            retry=Retry(NoBackoff(), 0),
        )

    async def aclose(self) -> None:
        """Close the node's client (a cluster's); ``client`` is the caller's to close."""
        node_client, self._node_client = self._node_client, None
        if node_client is not None:
            await node_client.aclose()

"""The three kinds of Redis tiercache runs on, and what differs between them for a driver:
one Redis (redis.Redis), Redis Sentinel (a master client of redis-py's Sentinel, whose pool
asks the sentinels where the master is) and Redis Cluster (redis.cluster.RedisCluster and
its asyncio twin). tiercache uses redis-py's own clients for all three; this module reads
their URLs, tells them apart, and finds what the drivers need of each: the connection
settings, a node for the subscriber, a fresh pool after a fork, a SCAN over every master.

URLs (from_url): ``redis://``, ``rediss://``, ``unix://`` (one Redis);
``redis+cluster://[user:password@]host:port,host:port/`` (``rediss+cluster://`` for TLS),
any reachable nodes, the rest are discovered; ``redis+sentinel://[user:password@]host:port,
host:port/service[/db]``, the sentinels, the service (master) name and the database.
"""

from __future__ import annotations

import collections
import inspect
import urllib.parse
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncClusterClient
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import AskError, MovedError, TryAgainError
from redis.sentinel import SentinelConnectionPool

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)


# Replies that say "ask elsewhere, or again": the slot moved, or is moving (TRYAGAIN: a
# multi-key command while some of its keys have left). A command sent again through the
# cluster client follows them.
REDIRECTED = (MovedError, AskError, TryAgainError)


def is_cluster(client: Any) -> bool:
    """Whether client is a Redis Cluster client (sync or asyncio)."""
    return isinstance(client, (ClusterClient, AsyncClusterClient))


def is_sentinel(client: Any) -> bool:
    """Whether client is a master client of redis-py's Sentinel (sync or asyncio)."""
    pool = getattr(client, "connection_pool", None)
    return isinstance(pool, (SentinelConnectionPool, AsyncSentinelPool))


def connection_kwargs(client: Any) -> dict[str, Any]:
    """The settings client's connections are made with."""
    if is_cluster(client):
        if isinstance(client, ClusterClient):
            return dict(client.get_connection_kwargs())  # type: ignore[no-untyped-call]  # untyped in redis-py
        return dict(client.connection_kwargs)
    return dict(client.connection_pool.connection_kwargs)


class BadURL(ValueError):
    """A Redis URL tiercache cannot use; the message says what is wrong with it."""


def parse_hosts(url: str, text: str) -> list[tuple[str, int]]:
    """host:port,host:port as a list of (host, port); BadURL naming the bad part."""
    hosts = []
    for part in text.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not part.strip():
            raise BadURL(f"{url!r}: an empty host in the host list")
        if not colon or not host:
            raise BadURL(f"{url!r}: {part!r} must be host:port")
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise BadURL(f"{url!r}: {part!r} has no valid port (1-65535)")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _split(url: str) -> tuple[str, str | None, str | None, list[tuple[str, int]], list[str], dict[str, str]]:
    """scheme, username, password, hosts, path segments, query of a cluster or sentinel URL."""
    scheme, _, rest = url.partition("://")
    if "#" in rest:
        raise BadURL(f"{url!r}: a Redis URL has no #fragment")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    auth, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = auth.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if colon else None
    if not hostlist:
        raise BadURL(f"{url!r}: no hosts after {scheme}://")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return scheme, username, password, parse_hosts(url, hostlist), [seg for seg in path.split("/") if seg], options


def _options(url: str, query: dict[str, str]) -> dict[str, Any]:
    """The query's client options: the numeric socket settings only."""
    known = {"socket_timeout": float, "socket_connect_timeout": float, "health_check_interval": int}
    out: dict[str, Any] = {}
    for name, text in query.items():
        if name not in known:
            raise BadURL(f"{url!r}: unknown option {name!r} (known: {', '.join(known)}; others go in redis_options)")
        try:
            out[name] = known[name](text)
        except ValueError:
            raise BadURL(f"{url!r}: option {name}={text!r} is not a number") from None
    return out


def kind_of_url(url: Any) -> str:
    """ "cluster", "sentinel" or "redis" (one Redis: redis-py reads the URL)."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    scheme = url.partition("://")[0].lower()
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    if scheme == "embedded":
        return "embedded"
    if "+" in scheme:
        raise BadURL(f"{url!r}: unknown scheme {scheme!r} (redis+cluster, rediss+cluster, redis+sentinel)")
    return "redis"


def embedded_url(url: str) -> str:
    """The unix:// URL of the embedded Redis an embedded:///directory URL names, started
    if it is not running (tiercache/embedded.py)."""
    from . import embedded

    sock = embedded.ensure(embedded.directory_of(url))
    return "unix://" + urllib.parse.quote(sock)  # redis-py unquotes it: a % # or ? in the path stays


def cluster_client(url: str, options: dict[str, Any], asyncio: bool = False) -> Any:
    """A RedisCluster (or its asyncio twin) for a redis+cluster:// URL and client options."""
    from redis.asyncio.cluster import ClusterNode as AsyncNode
    from redis.cluster import ClusterNode

    scheme, username, password, hosts, path, query = _split(url)
    if path not in ([], ["0"]):
        raise BadURL(f"{url!r}: Redis Cluster has one database (0): the URL takes no other path")
    settings = {**options, **_options(url, query)}
    settings.pop("timeout", None)  # the blocking pool's wait: the cluster's pools do not queue
    if username:
        settings["username"] = username
    if password is not None:
        settings["password"] = password
    if scheme.lower().startswith("rediss"):
        settings["ssl"] = True
    if asyncio:
        return AsyncClusterClient(startup_nodes=[AsyncNode(host, port) for host, port in hosts], **settings)
    return ClusterClient(startup_nodes=[ClusterNode(host, port) for host, port in hosts], **settings)  # type: ignore[no-untyped-call]


def sentinel_client(url: str, options: dict[str, Any], asyncio: bool = False) -> Any:
    """The master client of a redis+sentinel:// URL's service, with client options."""
    _, username, password, hosts, path, query = _split(url)
    if not path:
        raise BadURL(f"{url!r}: the service (master) name is missing: redis+sentinel://host:port,.../service/db")
    if len(path) > 2:
        raise BadURL(f"{url!r}: too many path segments: redis+sentinel://host:port,.../service/db")
    service = urllib.parse.unquote(path[0])
    db = path[1] if len(path) == 2 else "0"
    if not (db.isascii() and db.isdigit()) or int(db) >= 2**31:
        raise BadURL(f"{url!r}: the database must be a number (0 to 2**31 - 1), got {db!r}")
    settings = {**options, **_options(url, query)}
    settings.pop("timeout", None)  # a SentinelConnectionPool does not queue: past max_connections, busy at once
    retry = settings.pop("retry", None)
    if username:
        settings["username"] = username
    if password is not None:
        settings["password"] = password
    sentinel_settings = {key: settings[key] for key in ("socket_timeout", "socket_connect_timeout") if key in settings}
    if asyncio:
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel

        sentinels: Any = AsyncSentinel(hosts, sentinel_kwargs=sentinel_settings)  # type: ignore[no-untyped-call]
        master = sentinels.master_for(service, db=int(db), retry=retry, **settings)
    else:
        from redis.sentinel import Sentinel

        blocking: Any = Sentinel(hosts, sentinel_kwargs=sentinel_settings)  # type: ignore[no-untyped-call]
        master = blocking.master_for(service, db=int(db), retry=retry, **settings)
    master.auto_close_connection_pool = True  # closing the client closes the pool made for it
    return master


def node_settings(client: Any, plain: type) -> dict[str, Any]:
    """The connection settings of a cluster client that plain (redis.Redis or its asyncio
    twin) takes, for a plain client to one of its nodes (not the cluster's own hooks)."""
    takes = inspect.signature(plain).parameters
    skip = {"host", "port", "connection_pool", "redis_connect_func", "single_connection_client", "retry"}
    skip.add("oss_cluster_maint_notifications_handler")  # the cluster client's own
    return {key: value for key, value in connection_kwargs(client).items() if key in takes and key not in skip}


def after_fork(client: Any) -> None:
    """In a forked child: make a blocking client let go of the parent's connections."""
    if isinstance(client, ClusterClient):
        for node in client.get_nodes():  # type: ignore[no-untyped-call]
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.reset()
        return
    client.connection_pool.reset()


def forget_connections(client: Any) -> list[Any]:
    """In a forked child: an asyncio cluster client's nodes let go of the parent's
    connections, which are returned (to be kept, never closed: see base._inherited)."""
    kept = []
    for node in client.get_nodes():
        kept.append((node._connections, node._free))
        node._connections = []
        node._free = collections.deque(maxlen=node.max_connections)
    return kept


def sentinels_of(client: Any) -> list[Any]:
    """The clients of the sentinels a Sentinel master client asks (none for other kinds)."""
    if not is_sentinel(client):
        return []
    return list(client.connection_pool.sentinel_manager.sentinels)


def close(client: Any) -> None:
    """Close a blocking client tiercache made, the sentinels' clients with it."""
    client.close()
    for sentinel in sentinels_of(client):
        sentinel.close()


async def aclose(client: Any) -> None:
    """Close an asyncio client tiercache made (its pool too), the sentinels' clients with it."""
    if is_cluster(client):
        await client.aclose()
        # aclose() does nothing while the client waits to learn the cluster again (after a
        # node failed), and the nodes' connections would be left open: close them here.
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")
    else:
        await client.aclose(close_connection_pool=True)
    for sentinel in sentinels_of(client):
        await sentinel.aclose(close_connection_pool=True)


def master_address(connection: Any) -> tuple[str, int] | None:
    """Where a connection of a Sentinel master client is connected (host, port)."""
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    return (host, port) if host is not None and port is not None else None


def spublish(client: Any, publish: Any) -> Any:
    """A cache's message on a cluster: SPUBLISH, which the node serving the channel's slot
    delivers to its subscribers alone (README: Redis Cluster, for why not PUBLISH). The
    reply, or its awaitable on an asyncio client."""
    return client.execute_command("SPUBLISH", publish.channel, publish.message)


def scan_cursor(cursor: int) -> tuple[int, int]:
    """A SCAN over every master: tiercache's cursor is the master's number (in the order of
    their names) in its low 10 bits and that master's own SCAN cursor above them."""
    return cursor & 0x3FF, cursor >> 10


def next_cursor(master: int, masters: int, cursor: int) -> int:
    """tiercache's cursor after a SCAN step on master (of masters) that answered cursor."""
    if cursor:
        return (cursor << 10) | master
    return 0 if master + 1 >= masters else master + 1


def master_of(client: Any, request: Any) -> str | None:
    """The name of the master a cluster request goes to (core/sharding.request_slot), for its
    breaker; None if it names no key or no master serves its slot now."""
    from .core.sharding import request_slot

    slot = request_slot(request)
    return None if slot is None else master_of_slot(client, slot)


def master_of_slot(client: Any, slot: int) -> str | None:
    """The name of the master that serves slot; None if none does now (or the client does
    not know yet)."""
    try:
        name: str = client.nodes_manager.get_node_from_slot(slot).name
    except Exception:  # no master serves the slot now (or the client does not know it yet)
        return None
    return name


def ask_map(shared: Any, client: Any) -> None:
    """Have a blocking cluster client ask for the map of slots again (after a master
    failed), then forget the breakers of nodes that are no longer masters. If no node
    answers, it is asked again after the next failure; the caller's call is not affected."""
    try:
        client.nodes_manager.initialize()
    except Exception:
        shared.topology_stale = True
        return
    shared.keep_breakers({node.name for node in client.get_primaries()})


async def aask_map(shared: Any, client: Any) -> None:
    """ask_map for an asyncio cluster client."""
    try:
        await client.nodes_manager.initialize()
    except Exception:
        shared.topology_stale = True
        return
    shared.keep_breakers({node.name for node in client.get_primaries()})


def masters(client: Any) -> list[Any]:
    """The cluster's masters, in the order of their names."""
    return sorted(client.get_primaries(), key=lambda node: node.name)

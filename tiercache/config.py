"""Caches from configuration: a mapping, environment variables, or a YAML file.

One schema for all three (FIELDS). A mapping may nest the L1's settings (``l1: {maxsize: ...}``)
and the Redis client's (``redis: {socket_timeout: ...}``) or spell them flat (``l1_maxsize``);
environment variables are the flat names in capitals after a prefix (``TIERCACHE_L1_MAXSIZE``),
read as text and converted. Whatever is wrong (an unknown field, a value of the wrong kind or
out of range) raises one ConfigError naming the field and what it accepts, before any
connection is made.

What a config builds is what from_url builds with the same options; ``url`` defaults to
redis://127.0.0.1:6379/0. ``backend: memory`` builds what in_memory() builds instead (no
Redis: url, the client's settings, invalidation and lease are ignored), and so does
``enabled: false``, with a cache that keeps nothing (every call reaches the loader/writer).
``backend: embedded`` with ``directory: /path`` builds from_url("embedded:///path"): a
private redis-server kept in that directory (tiercache/embedded.py).
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("a non-empty string")
    return value


def _is_none(value: Any) -> bool:
    """None, or its spelling in text (an environment variable, YAML's null as a string)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))


def _seconds_or_none(value: Any) -> float | None:
    if _is_none(value):
        return None
    seconds = _number(value)  # "inf" and math.inf: no expiry
    if seconds <= 0:
        raise ValueError("a positive number of seconds, inf or none")
    return seconds


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a number")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise TypeError("a number") from None
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError("a number")
    return float(value)


def _positive(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("a positive number")
    return number


def _count(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a whole number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < 0:
        raise TypeError("a whole number, 0 or more")
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise TypeError("true or false")


def _flag_or_number(value: Any) -> bool | float:
    try:
        return _flag(value)
    except TypeError:
        pass
    try:
        number = _number(value)
    except TypeError:
        raise TypeError("true, false or a number >= 0") from None
    if number < 0 or math.isinf(number):
        raise ValueError("true, false or a number >= 0")
    return number


def _window(value: Any) -> float | None:
    if _is_none(value):
        return None
    seconds = _number(value)
    if seconds < 0 or math.isinf(seconds):
        raise ValueError("a number of seconds >= 0, or none")
    return seconds or None


def _choice(*allowed: str | None) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if _is_none(value) and None in allowed:
            return None
        if value not in allowed:
            raise ValueError("one of " + ", ".join(repr(choice) for choice in allowed))
        return value

    return parse


# field -> (where it goes: "cache" option, "redis" option, or the url/name; its parser)
FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "url": ("url", _text),
    "name": ("name", _text),
    "backend": ("backend", _choice("redis", "memory", "embedded")),
    "directory": ("directory", _text),
    "enabled": ("enabled", _flag),
    "default_ttl": ("cache", _seconds_or_none),
    "key_prefix": ("cache", _text),
    "l1_maxsize": ("cache", _count),
    "l1_ttl": ("cache", _seconds_or_none),
    "l1_policy": ("cache", _choice("lru", "s3fifo")),
    "serializer": ("cache", _choice("msgpack", "pickle")),
    "secret": ("cache", _text),
    "compression": ("cache", _choice("zlib", "lz4", "zstd", None)),
    "compress_threshold": ("cache", _count),
    "invalidation": ("cache", _choice("pubsub", "tracking", None)),
    "lease": ("cache", _flag),
    "lease_ttl": ("cache", _positive),
    "cache_none": ("cache", _flag),
    "strict": ("cache", _flag),
    "breaker_threshold": ("cache", _count),
    "breaker_reset": ("cache", _positive),
    "early_refresh": ("cache", _flag_or_number),
    "stale_while_revalidate": ("cache", _window),
    "stale_if_error": ("cache", _window),
    "socket_timeout": ("redis", _positive),
    "connect_timeout": ("redis", _positive),
    "max_connections": ("redis", _count),
}
_NESTED = {"l1": ("maxsize", "ttl", "policy"), "redis": ("socket_timeout", "connect_timeout", "max_connections")}
_REDIS_NAMES = {"connect_timeout": "socket_connect_timeout"}


class Config:
    """A checked configuration: url, name, the cache's options, the client's options."""

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"a configuration is a mapping of fields, got {type(mapping).__name__}")
        self.url = DEFAULT_URL
        self.name: str | None = None
        self.backend = "redis"
        self.directory: str | None = None
        url_given = False
        self.enabled = True
        self.options: dict[str, Any] = {}
        self.redis_options: dict[str, Any] = {}
        for field, value in _flatten(mapping).items():
            if field not in FIELDS:
                raise ConfigError(f"unknown configuration field {field!r}; the fields are: {', '.join(sorted(FIELDS))}")
            target, parse = FIELDS[field]
            try:
                parsed = parse(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"configuration field {field!r} must be {exc}, got {value!r}") from None
            if target == "url":
                self.url, url_given = parsed, True
            elif target == "directory":
                self.directory = parsed
            elif target == "name":
                self.name = parsed
            elif target == "backend":
                self.backend = parsed
            elif target == "enabled":
                self.enabled = parsed
            elif target == "redis":
                self.redis_options[_REDIS_NAMES.get(field, field)] = parsed
            else:
                self.options[field] = parsed
        if self.name is None:
            raise ConfigError("configuration field 'name' is required (the cache's name)")
        if self.backend == "embedded":
            if self.directory is None:
                raise ConfigError("backend 'embedded' needs the field 'directory' (where its redis-server keeps data)")
            if url_given:
                raise ConfigError("backend 'embedded' takes 'directory', not 'url' (embedded:///directory is that url)")
            self.url = "embedded://" + urllib.parse.quote(os.path.abspath(self.directory))
        elif self.directory is not None:
            raise ConfigError(f"configuration field 'directory' is for backend 'embedded', not {self.backend!r}")
        if self.in_memory:  # no Redis, nobody to share with: url and the client's settings do not apply
            for option in ("invalidation", "lease"):
                self.options.pop(option, None)

    @property
    def in_memory(self) -> bool:
        """Whether the cache keeps its entries in this process (backend memory, or
        enabled false: nothing kept at all)."""
        return self.backend == "memory" or not self.enabled


def _flatten(mapping: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for field, value in mapping.items():
        if not isinstance(field, str):
            raise ConfigError(f"configuration fields are names, got {field!r}")
        if field in _NESTED and isinstance(value, Mapping):
            for inner, inner_value in value.items():
                if inner not in _NESTED[field]:
                    raise ConfigError(
                        f"unknown configuration field {field}.{inner}; {field} takes: {', '.join(_NESTED[field])}"
                    )
                flat[inner if field == "redis" else f"l1_{inner}"] = inner_value
        else:
            flat[field] = value
    return flat


# Variables under the default prefix that are switches of the package, not fields.
PACKAGE_VARIABLES = frozenset({"TIERCACHE_NO_EXTENSIONS"})


def from_environment(environ: Mapping[str, str], prefix: str) -> dict[str, str]:
    """The fields set in environ under prefix (TIERCACHE_L1_MAXSIZE -> l1_maxsize)."""
    found = {}
    for variable, value in environ.items():
        if variable.startswith(prefix) and variable not in PACKAGE_VARIABLES:
            found[variable[len(prefix) :].lower()] = value
    return found


def read_file(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """A YAML file's configuration (the document itself, or its `tiercache:` section)."""
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading a YAML configuration needs PyYAML: pip install 'tiercache[yaml]'") from None
    try:
        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {os.fspath(path)!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {os.fspath(path)!r} is not valid YAML: {exc}") from exc
    if isinstance(document, Mapping) and isinstance(document.get("tiercache"), Mapping):
        document = document["tiercache"]
    if not isinstance(document, Mapping):
        raise ConfigError(f"configuration file {os.fspath(path)!r} must hold a mapping of fields")
    return document

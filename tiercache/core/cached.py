"""The @cache.cached decorator's rules, for both drivers: which key a call reads and writes.

A key is either a template formatted from the call's bound arguments (defaults applied),
``key="user:{user_id}"`` or ``key="order:{order.id}:{lines[0]}"``, checked when the function
is decorated, or, with no template, the function's module and qualified name and a digest
of a stable encoding of its arguments: the same in every process, every run and every
Python version (never ``hash()``, which differs between processes for str and bytes).

The stable encoding accepts what has one obvious canonical form: None, bool, int, float,
str, bytes, and tuples, lists, dicts (keys sorted by their encoding), sets and frozensets
(sorted), enum members (by class and value), dates, times, datetimes, timedeltas, UUIDs and
Decimals. Anything else (an object whose repr holds an address, a file, a lock) raises
TypeError naming the argument, rather than make a key that differs between processes. A
method needs a template naming what identifies its instance (``key="user:{self.id}"``): a
digest without it would be shared by every instance; a classmethod's ``cls`` counts by its
qualified name. Lambdas, closures and callable objects have no name that is the same in
every process: they need ``name=`` or a template.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import hashlib
import importlib
import inspect
import math
import string
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from .plans import get_or_load
from .tags import check_tags


class _KeyFormatter(string.Formatter):
    """str.format for key templates, refusing values whose text is only their type and
    address (object's default repr): that would differ between processes, and collide
    when an address is reused."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        kind: Any = type(value)
        plain = object.__dict__
        if all(getattr(kind, name) is plain[name] for name in ("__format__", "__str__", "__repr__")):
            raise TypeError(f"{kind.__qualname__} has no text of its own for a key (name one of its fields)")
        return super().format_field(value, format_spec)


_FORMATTER = _KeyFormatter()


def check_decorated(func: Any, asynchronous: bool, has_name: bool, has_template: bool) -> None:
    """What @cached refuses at decoration, for the right kind of function."""
    if isinstance(func, (staticmethod, classmethod)):
        raise TypeError(f"put @{type(func).__name__} outside @cached (cached decorates the function itself)")
    if not callable(func):
        raise TypeError(f"cached() decorates a function, got {type(func).__name__}")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError("cached() cannot cache a generator: return a list instead")
    is_async = inspect.iscoroutinefunction(func) or getattr(func, "_tiercache_async", False)
    if asynchronous and not is_async:
        raise TypeError(f"{func!r} is not a coroutine function: decorate it with TieredCache.cached")
    if not asynchronous and is_async:
        raise TypeError(f"{func!r} is a coroutine function: decorate it with AsyncTieredCache.cached")
    qualname = getattr(func, "__qualname__", None)
    if not has_name and not has_template and (qualname is None or "<lambda>" in qualname or "<locals>" in qualname):
        raise TypeError(
            f"{func!r} has no name that is the same in every process (a lambda, a closure or a "
            "callable object): give cached() a name= or a key template"
        )


class CallKeys:
    """The keys of one decorated function's calls."""

    def __init__(
        self, func: Callable[..., Any], template: str | None, name: str | None = None, tags: Any = None
    ) -> None:
        self.signature = inspect.signature(func)
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        self.name = name or f"{func.__module__}.{getattr(func, '__qualname__', '')}"
        params = list(self.signature.parameters.values())
        first = params[0].name if params else None
        self._first = first if first in ("self", "cls") else None
        self._any_name = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self.template = template
        if template is not None:
            if not isinstance(template, str):
                raise TypeError(f"key must be a str template, got {type(template).__name__}")
            self._check(template)
        elif self._first == "self":
            raise TypeError(
                f"{self.name}: a method's key without a template would be shared by every instance: "
                'name what identifies the instance in a key template (key="...{self.id}...")'
            )
        # Tags are templates too ("tenant:{tenant_id}"), formatted for each call.
        self.tag_templates = () if tags is None else check_tags(tags)
        for tag in self.tag_templates:
            self._check(tag, "tag")

    def _check(self, template: str, what: str = "key") -> None:
        """Every placeholder names a parameter of the function (or any name, with **kwargs)."""
        try:
            fields = [field for _, field, _, _ in _FORMATTER.parse(template) if field is not None]
        except ValueError as exc:
            raise ValueError(f"{what} template {template!r} is malformed: {exc}") from None
        names = set(self.signature.parameters)
        for field in fields:
            root = _root(field)
            if not root:
                raise ValueError(f"{what} template {template!r}: a placeholder must name a parameter, not {{{field}}}")
            if root not in names and not self._any_name:
                raise ValueError(
                    f"{what} template {template!r} names {root!r}, "
                    f"which is not a parameter of {self.name}{self.signature}"
                )

    def _arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], flat: bool) -> dict[str, Any]:
        """A call's arguments by name, defaults applied (TypeError if they do not fit the
        signature); flat: **kwargs merged in, as templates name them."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if flat:
            for param in self.signature.parameters.values():
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    extra = arguments.pop(param.name, {})
                    clash = set(extra) & set(self.signature.parameters)
                    if clash:  # def f(a, /, **kw): f(1, a=2) must not read as a=2
                        raise ValueError(f"keyword {sorted(clash)[0]!r} is also a parameter's name in {self.name}")
                    arguments.update(extra)
        return arguments

    @staticmethod
    def _format(template: str, arguments: Mapping[str, Any], what: str) -> str:
        try:
            return _FORMATTER.vformat(template, (), arguments)
        except (KeyError, AttributeError, IndexError, ValueError) as exc:
            raise ValueError(f"{what} template {template!r} cannot be formatted for this call: {exc!r}") from None
        except TypeError as exc:
            raise TypeError(f"{what} template {template!r}: {exc}") from None

    def tags(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The tags a call's result is stored under (None: no tags)."""
        if not self.tag_templates:
            return None
        arguments = self._arguments(args, kwargs, True)
        return tuple(self._format(tag, arguments, "tag") for tag in self.tag_templates)

    def key(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """The cache key of one call (TypeError if the arguments do not fit the signature)."""
        arguments = self._arguments(args, kwargs, self.template is not None)
        if self.template is not None:
            return self._format(self.template, arguments, "key")
        if self._first == "cls":  # a classmethod: the class by name (a subclass is not its parent)
            cls = arguments.pop("cls", None)
            arguments["cls"] = f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls)}"
        parts = []
        for name, value in arguments.items():
            try:
                parts.append([name, stable(value)])
            except TypeError as exc:
                raise TypeError(f"{self.name}: argument {name!r} cannot be part of a cache key: {exc}") from None
        encoded: bytes = msgpack.packb(parts, use_bin_type=True)
        return f"{self.name}:{hashlib.sha256(encoded).hexdigest()[:32]}"


def _root(field: str) -> str:
    """The parameter a placeholder starts from: "order" in "order.id" or "order[0]"."""
    for index, char in enumerate(field):
        if char in ".[":
            return field[:index]
    return field


def stable(value: Any) -> Any:
    """value as msgpack-ready data that is the same in every process, or TypeError."""
    kind = type(value)
    if value is None or kind in (bool, str, bytes):
        return value
    if kind is int:
        return value if -(2**63) <= value < 2**64 else ["int", str(value)]
    if kind is float:
        return ["float", repr(value)] if math.isnan(value) else value
    if kind in (tuple, list):
        return [kind.__name__, [stable(item) for item in value]]
    if kind is dict:
        items = [(stable(k), stable(v)) for k, v in value.items()]
        # By key, then value: two NaN keys encode alike, and insertion order must not decide.
        items.sort(key=lambda pair: msgpack.packb(pair, use_bin_type=True))
        return ["dict", [list(pair) for pair in items]]
    if kind in (set, frozenset):
        members = sorted((stable(item) for item in value), key=lambda item: msgpack.packb(item, use_bin_type=True))
        return [kind.__name__, members]
    if isinstance(value, enum.Enum):
        return ["enum", f"{kind.__module__}.{kind.__qualname__}", stable(value.value)]
    if kind in (datetime.datetime, datetime.time):  # the zone by name: Paris is not +01:00
        return [kind.__name__, value.isoformat(), None if value.tzinfo is None else str(value.tzinfo)]
    if kind is datetime.date:
        return ["date", value.isoformat()]
    if kind is datetime.timedelta:
        return ["timedelta", value.days, value.seconds, value.microseconds]
    if kind is uuid.UUID:
        return ["uuid", value.bytes]
    if kind is decimal.Decimal:
        return ["decimal", str(value)]
    raise TypeError(f"{kind.__qualname__} has no stable encoding (use a key template, or pass plain data)")


_UNBOUND: Any = object()


class Decorated:
    """What the sync and the async decorated function share (cache.CachedFunction,
    aio.AsyncCachedFunction add the calls): the key of a call, the plan that reads or loads
    it, and binding to an instance when the function is a method."""

    def __init__(
        self,
        cache: Any,
        func: Callable[..., Any],
        keys: CallKeys,
        ttl: Any,
        condition: Callable[..., Any] | None,
        unless: Callable[[Any], Any] | None,
        cache_none: bool | None,
        fresh: Any = None,
        instance: Any = _UNBOUND,
    ) -> None:
        for name, hook in (("condition", condition), ("unless", unless)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {type(hook).__name__}")
            if inspect.iscoroutinefunction(hook):  # its coroutine would always read as true
                raise TypeError(f"{name} must be a plain function, not a coroutine function")
        if cache_none is not None and not isinstance(cache_none, bool):
            raise TypeError(f"cache_none must be a bool or None, got {cache_none!r}")
        cache._shared.ttl_ms(ttl)  # a bad ttl raises here, at decoration
        self._cache = cache
        self._func = func
        self._keys = keys
        self._ttl = ttl
        self._condition = condition
        self._unless = unless
        self._cache_none = cache_none
        self._fresh = fresh  # core/freshness.py's settings for its calls (None: the cache's)
        self._instance = instance
        # Not __dict__: over another @cached, that would copy the inner one's cache and rules.
        functools.update_wrapper(self, func, updated=())  # type: ignore[arg-type]  # an object, not a function

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """On an instance, the same function bound to it (its key sees that self)."""
        if instance is None:
            return self
        return type(self)(
            self._cache,
            self._func,
            self._keys,
            self._ttl,
            self._condition,
            self._unless,
            self._cache_none,
            self._fresh,
            instance,
        )

    def _bound(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args if self._instance is _UNBOUND else (self._instance, *args)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The cache key a call with these arguments reads and writes."""
        return self._keys.key(self._bound(args), kwargs)

    def _uses_cache(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        return self._condition is None or bool(self._condition(*args, **kwargs))

    def _plan(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        func, unless = self._func, self._unless
        keep = None if unless is None else (lambda value: not unless(value))
        keys = self._keys
        return get_or_load(
            self._cache._scope,
            keys.key(args, kwargs),
            lambda _key: func(*args, **kwargs),
            self._ttl,
            keep=keep,
            cache_none=self._cache_none,
            tags=keys.tags(args, kwargs),
            fresh=self._fresh,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by name, as functools.lru_cache's wrappers are: the receiving process
        imports the same decorated function (so it can go to a ProcessPoolExecutor)."""
        func = self._func
        if self._instance is not _UNBOUND:
            return getattr, (self._instance, func.__name__)
        return _by_name, (func.__module__, func.__qualname__)

    def __repr__(self) -> str:
        return f"<cached {self._keys.name} on {self._cache!r}>"


def _by_name(module: str, qualname: str) -> Any:
    """The object a module's qualified name stands for (Decorated.__reduce__)."""
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found

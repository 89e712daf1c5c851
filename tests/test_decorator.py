"""@cache.cached: keys, options and binding, sync and async, against a real Redis."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import subprocess
import sys
import textwrap
import threading
import uuid

import msgpack
import pytest

from tiercache import AsyncTieredCache
from tiercache.core.cached import CallKeys, stable


class Color(enum.Enum):
    RED = 1


def test_a_template_key_is_formatted_from_the_bound_arguments_with_defaults(cache):
    calls = []

    @cache.cached(ttl=60, key="user:{user_id}:{lang}")
    def profile(user_id, lang="en"):
        calls.append((user_id, lang))
        return {"id": user_id, "lang": lang}

    assert profile(7) == {"id": 7, "lang": "en"}
    assert profile(user_id=7) == {"id": 7, "lang": "en"}  # the same call, the same key
    assert calls == [(7, "en")]
    assert profile.cache_key(7) == "user:7:en"
    assert cache.get("user:7:en") == {"id": 7, "lang": "en"}  # an ordinary key of the cache
    assert profile.invalidate(7) is True
    assert cache.get("user:7:en") is None
    assert profile(7) == {"id": 7, "lang": "en"} and len(calls) == 2


def test_templates_reach_into_attributes_and_items(cache):
    class Order:
        id = 12

    @cache.cached(key="order:{order.id}:{lines[0]}")
    def total(order, lines):
        return sum(lines)

    assert total.cache_key(Order(), [3, 4]) == "order:12:3"
    assert total(Order(), [3, 4]) == 7


@pytest.mark.parametrize(
    "template, message",
    [("u:{nope}", "names 'nope'"), ("u:{}", "must name a parameter"), ("u:{user_id", "malformed"), ("u:{0}", "'0'")],
)
def test_a_bad_template_raises_at_decoration(cache, template, message):
    with pytest.raises(ValueError, match=message):

        @cache.cached(key=template)
        def load(user_id):
            return user_id


def test_a_template_may_name_anything_a_function_takes_as_kwargs(cache):
    @cache.cached(key="q:{region}")
    def search(**filters):
        return filters

    assert search.cache_key(region="eu") == "q:eu"
    with pytest.raises(ValueError, match="cannot be formatted"):
        search(other=1)


def test_arguments_that_do_not_fit_raise_typeerror_like_the_function(cache):
    with pytest.raises(TypeError):
        cache.cached()(add)(1, 2, 3)


ADDED: list = []


def add(a, b=2):
    ADDED.append((a, b))
    return a + b


def test_without_a_template_the_key_is_the_function_and_a_digest_of_its_arguments(cache):
    cached_add = cache.cached()(add)
    ADDED.clear()
    assert cached_add(1) == cached_add(1, 2) == cached_add(a=1, b=2) == 3
    assert ADDED == [(1, 2)]
    key = cached_add.cache_key(1)
    assert key.startswith(f"{__name__}.add:")
    assert key != cached_add.cache_key(2) and key != cached_add.cache_key(1, 3)
    assert cached_add.cache_key(1.0) != key and cached_add.cache_key(True) != key  # types count


def test_unencodable_arguments_raise_naming_the_argument(cache):
    @cache.cached(name="lookup")
    def lookup(conn, key):
        return key

    with pytest.raises(TypeError, match="argument 'conn' cannot be part of a cache key"):
        lookup(threading.Lock(), "k")


def test_the_stable_encoding_is_canonical():
    assert stable({"b": 1, "a": 2}) == stable({"a": 2, "b": 1})
    assert stable({3, 1, 2}) == stable({2, 3, 1})
    assert stable((1, 2)) != stable([1, 2])
    nan_a, nan_b = float("nan"), float("nan")  # two keys of one dict that encode alike
    assert stable({nan_a: 1, nan_b: 2}) == stable({nan_b: 2, nan_a: 1})
    packed = {msgpack.packb(stable(value)) for value in (1, 1.0, True)}
    assert len(packed) == 3  # equal in Python, not the same argument
    assert stable(Color.RED) == ["enum", f"{__name__}.Color", 1]
    for value in (
        datetime.date(2026, 1, 2),
        datetime.datetime(2026, 1, 2, 3, 4),
        datetime.timedelta(1, 2),
        uuid.UUID(int=5),
        decimal.Decimal("1.50"),
        float("nan"),
        2**70,
        None,
        b"x",
    ):
        stable(value)  # each has one
    with pytest.raises(TypeError, match="has no stable encoding"):
        stable(object())


def test_keys_are_the_same_in_another_process():
    """Never hash(): str hashes differ between processes (PYTHONHASHSEED)."""
    code = textwrap.dedent(
        """
        import datetime, sys
        from tiercache.core.cached import CallKeys
        def report(user, tags, when, options=None):
            pass
        keys = CallKeys(report, None)
        print(keys.key(("ada", {"b", "a"}, datetime.date(2026, 1, 2)), {"options": {"x": [1, 2.5]}}))
        """
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] and runs[0].startswith("__main__.report:")


def test_condition_unless_and_cache_none(cache):
    calls = []

    @cache.cached(condition=lambda n: n >= 0, unless=lambda result: result == "odd", cache_none=True, name="parity")
    def parity(n):
        calls.append(n)
        return None if n == 0 else ("odd" if n % 2 else "even")

    assert parity(-1) == "odd" and parity(-1) == "odd"  # condition false: no cache at all
    assert calls == [-1, -1]
    assert not cache.exists(parity.cache_key(-1))
    assert parity(3) == "odd" and parity(3) == "odd"  # unless: computed, not stored
    assert calls[-2:] == [3, 3]
    assert parity(2) == "even" and parity(2) == "even"
    assert calls.count(2) == 1
    assert parity(0) is None and parity(0) is None  # cache_none=True stores None
    assert calls.count(0) == 1


def test_a_raising_unless_stores_nothing_and_raises(cache):
    @cache.cached(unless=lambda result: 1 / 0, name="value")
    def value():
        return 5

    with pytest.raises(ZeroDivisionError):
        value()
    assert not cache.exists(value.cache_key())


def test_concurrent_callers_make_one_call(cache):
    calls = []
    started = threading.Barrier(8)

    @cache.cached(key="slow")
    def slow():
        calls.append(1)
        threading.Event().wait(0.2)
        return "done"

    def call():
        started.wait()
        assert slow() == "done"

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert calls == [1]


def test_methods_need_a_template_naming_their_instance(cache):
    calls = []

    with pytest.raises(TypeError, match="shared by every instance"):

        class Unsafe:
            @cache.cached(name="profile")
            def profile(self):
                return 1

    class Repo:
        def __init__(self, tenant):
            self.tenant = tenant

        @cache.cached(key="t:{self.tenant}:{kind}")
        def scoped(self, kind):
            calls.append((self.tenant, kind))
            return self.tenant

        @classmethod
        @cache.cached(name="build")
        def build(cls, n):
            calls.append((cls.__name__, n))
            return cls.__name__

    class Child(Repo):
        pass

    assert Repo("a").scoped("k") == "a" and Repo("b").scoped("k") == "b"
    assert Repo("a").scoped("k") == "a" and len(calls) == 2
    assert Repo("b").scoped.cache_key("k") == "t:b:k"
    assert Repo("a").scoped.invalidate("k") is True
    assert Repo.build(1) == "Repo" and Child.build(1) == "Child"  # cls counts by its name


def test_what_cannot_be_named_the_same_in_every_process_is_refused(cache):
    with pytest.raises(TypeError, match="name= or a key template"):
        cache.cached()(lambda x: x)

    def factory(n):
        def inner(x):
            return x * n

        return inner

    with pytest.raises(TypeError, match="name= or a key template"):
        cache.cached()(factory(2))
    named = cache.cached(name="times2")(factory(2))
    assert named.cache_key(3).startswith("times2:") and named(3) == 6
    assert cache.cached(key="t3:{x}")(factory(3))(2) == 6


def test_a_template_refuses_values_that_print_as_an_address(cache):
    class Plain:
        pass

    @cache.cached(key="o:{obj}")
    def show(obj):
        return 1

    with pytest.raises(TypeError, match="no text of its own"):
        show(Plain())


def test_kwargs_cannot_stand_in_for_a_positional_only_parameter(cache):
    @cache.cached(key="x:{a}")
    def g(a, /, **kw):
        return a

    assert g.cache_key(2) == "x:2"
    with pytest.raises(ValueError, match="also a parameter"):
        g(1, a=2)


def test_decorators_refused_in_the_wrong_place_or_on_generators(cache):
    with pytest.raises(TypeError, match="outside @cached"):
        cache.cached(name="s")(staticmethod(lambda x: x))

    def numbers():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        cache.cached()(numbers)


def test_stacked_decorators_keep_their_own_cache(cache, make_cache):
    other = make_cache(name=cache.name + "-other")

    @cache.cached(key="outer:{n}")
    @other.cached(key="inner:{n}")
    def twice(n):
        return 2 * n

    assert twice(2) == 4
    assert cache.get("outer:2") == 4 and other.get("inner:2") == 4


def test_zones_count_by_name():
    import zoneinfo

    paris = datetime.datetime(2026, 1, 2, 3, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    fixed = datetime.datetime(2026, 1, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert paris.isoformat() == fixed.isoformat()
    assert stable(paris) != stable(fixed)


def test_the_wrapper_looks_like_the_function(cache):
    @cache.cached(name="documented")
    def documented(x):
        """Doc."""
        return x

    assert documented.__name__ == "documented" and documented.__doc__ == "Doc."
    assert documented.__wrapped__(3) == 3


def test_the_wrong_kind_of_function_raises_at_decoration(cache):
    async def coroutine_function():
        return 1

    with pytest.raises(TypeError, match="AsyncTieredCache.cached"):
        cache.cached()(coroutine_function)
    with pytest.raises(ValueError):
        cache.cached(ttl=-1, name="t")(lambda: 1)
    with pytest.raises(TypeError, match="condition must be callable"):
        cache.cached(condition=1, name="c")(lambda: 1)

    async def later(*args):
        return False

    with pytest.raises(TypeError, match="not a coroutine function"):
        cache.cached(condition=later, name="c")(lambda: 1)


def test_a_namespace_scopes_decorated_keys(cache):
    tenant = cache.namespace("t1")

    @tenant.cached(key="profile:{uid}")
    def profile(uid):
        return uid

    assert profile(4) == 4
    assert tenant.get("profile:4") == 4 and cache.get("profile:4") is None


def test_call_keys_checks_the_template_type():
    with pytest.raises(TypeError, match="str template"):
        CallKeys(lambda: 1, 5)  # type: ignore[arg-type]


async def test_the_async_decorator(redis_server, cache_name):
    calls = []
    async with AsyncTieredCache.from_url(redis_server.url, name=cache_name) as cache:

        @cache.cached(key="a:{x}", unless=lambda result: result < 0)
        async def double(x):
            calls.append(x)
            return 2 * x

        assert await double(2) == 4 and await double(2) == 4
        assert await double(-1) == -2 and await double(-1) == -2
        assert calls == [2, -1, -1]
        assert await double.invalidate(2) is True
        assert await double(2) == 4 and calls[-1] == 2

        with pytest.raises(TypeError, match="TieredCache.cached"):
            cache.cached(name="n")(lambda: 1)
        assert asyncio.iscoroutinefunction(double)  # frameworks ask before awaiting

        @cache.cached(key="b:{x}")
        @cache.namespace("inner").cached(key="b:{x}")
        async def stacked(x):
            return x

        assert await stacked(3) == 3


def to_pickle(x):
    return x


def test_a_decorated_function_pickles_by_name(cache, monkeypatch):
    """As @cached at module level leaves it: the module's name is the decorated function."""
    import pickle

    decorated = cache.cached(name="to_pickle")(to_pickle)
    monkeypatch.setitem(globals(), "to_pickle", decorated)
    assert pickle.loads(pickle.dumps(decorated)) is decorated

"""Python code that runs inside an L1 call cannot crash or corrupt it (DESIGN.md invariant 12).

Each case once crashed the compiled LocalCache (segfault or hang). They run in a child
interpreter with faulthandler on, so a crash fails its test instead of killing the run; the
child checks what the cache returned and that the cache is whole afterwards. Both twins run
every case (the pure twin through TIERCACHE_NO_EXTENSIONS).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tiercache.local import NO_EXTENSIONS

IMPLS = ["py"] if NO_EXTENSIONS else ["c", "py"]

# Shared by every child: a consistency check that walks the cache every way there is.
PRELUDE = """
import gc, sys, threading, time, weakref
from tiercache.local import EXTENSION, LocalCache

def check_whole(cache):
    keys = list(cache)
    assert keys == [k for k, _ in cache.items()], "iteration and items() disagree"
    assert len(set(keys)) == len(keys), "a key listed twice"
    for key, value in cache.items():
        assert cache.peek(key, "<gone>") is value, (key, value)
    assert len(keys) <= len(cache) <= max(cache.maxsize, 0), (len(keys), len(cache))
    cache.set("probe", 1)
    assert cache.get("probe") == 1
    cache.clear()
    assert len(cache) == 0 and list(cache) == []

class Cycle:
    '''Garbage only the collector frees; its __del__ runs action() when it does.'''
    def __init__(self, action):
        self.me = self
        self.action = action
    def __del__(self):
        self.action()
"""

EXPECTED_IMPL = {"c": "True", "py": "False"}


def run_child(impl: str, body: str, timeout: float = 60) -> str:
    env = dict(os.environ)
    env.pop("TIERCACHE_NO_EXTENSIONS", None)
    if impl == "py":
        env["TIERCACHE_NO_EXTENSIONS"] = "1"
    code = PRELUDE + textwrap.dedent(body) + "\nprint('extension', EXTENSION)\n"
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, f"child exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert f"extension {EXPECTED_IMPL[impl]}" in proc.stdout  # the twin we meant ran
    return proc.stdout


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_walks_survive_a_finalizer_that_clears_or_fills_the_cache(impl):
    # The collector runs when enough objects have been allocated since the last pass: reset
    # the count, leave garbage with finalizers, and let the walk's own allocations (a tuple
    # or list per entry) trigger the pass part-way through. Several thresholds, so some pass
    # lands mid-walk whatever else allocates. Before the two-phase walks: exit 139.
    out = run_child(
        impl,
        """
        import copy
        for threshold in (50, 200, 500, 900):
            for method in ("items", "keys", "values", "iter", "reversed", "popitem", "copy"):
                for action in ("clear", "fill"):
                    cache = LocalCache(1000)
                    for i in range(1000):
                        cache[i] = [i]
                    def act(cache=cache, action=action):
                        if action == "clear":
                            cache.clear()
                        else:
                            for j in range(2000, 3000):
                                cache[j] = [j]
                    gc.collect()
                    gc.set_threshold(threshold)
                    garbage = [Cycle(act) for _ in range(3)]
                    del garbage
                    try:
                        if method == "items":
                            got = list(cache.items())
                            assert all(v == [k] for k, v in got)
                        elif method == "keys":
                            got = list(cache.keys())
                        elif method == "values":
                            got = list(cache.values())
                            assert all(type(v) is list for v in got)
                        elif method == "iter":
                            got = list(iter(cache))
                        elif method == "reversed":
                            got = list(reversed(cache))
                        elif method == "popitem":
                            got = []  # kept, so the count of live objects grows
                            try:
                                for _ in range(900):
                                    got.append(cache.popitem())
                            except KeyError:  # the finalizer emptied the cache
                                assert action == "clear" and len(cache) == 0
                            assert all(v == [k] for k, v in got)
                            assert not any(k in cache for k, _ in got)
                        else:
                            twin = copy.copy(cache)
                            assert all(v == [k] for k, v in twin.items())
                            check_whole(twin)
                    finally:
                        gc.set_threshold(700, 10, 10)
                    gc.collect()
                    check_whole(cache)
        print("walks ok")
    """,
    )
    assert "walks ok" in out


def test_a_timer_that_changes_the_cache_cannot_leave_a_stale_slot(impl):
    out = run_child(
        impl,
        """
        for action in ("clear", "fill", "delete", "reinit"):
            now = [0.0]
            def timer():
                if armed[0]:
                    armed[0] = False
                    if action == "clear":
                        cache.clear()
                    elif action == "fill":
                        for j in range(50):
                            cache.set(("x", j), j)
                    elif action == "delete":
                        cache.delete("k")
                    else:
                        cache.__init__(3, ttl=10, timer=timer)
                return now[0]
            armed = [False]
            cache = LocalCache(40, ttl=10, timer=timer)
            for i in range(40):
                cache.set(i, i)
            cache.set("k", "v")
            for read in ("contains", "peek", "get", "ttl", "expire", "delete", "items", "popitem"):
                cache.set("k", "v")
                armed[0] = True
                if read == "contains":
                    result = "k" in cache
                elif read == "peek":
                    result = cache.peek("k")
                    assert result in ("v", None), result
                elif read == "get":
                    result = cache.get("k")
                    assert result in ("v", None), result
                elif read == "ttl":
                    result = cache.ttl("k")
                elif read == "expire":
                    result = cache.expire("k", 5)
                elif read == "delete":
                    result = cache.delete("k")
                elif read == "items":
                    result = list(cache.items())
                else:
                    try:
                        result = cache.popitem()
                    except KeyError:  # the timer emptied the cache first
                        assert len(cache) == 0
                armed[0] = False
            check_whole(cache)
        print("timer ok")
    """,
    )
    assert "timer ok" in out


def test_an_eq_that_drops_the_entry_it_is_compared_with(impl):
    if impl == "py":
        pytest.skip("the pure twin's dict runs __eq__ mid-update (see _local_py's docstring)")
    out = run_child(
        impl,
        """
        armed = [False]
        class Key:
            def __init__(self, n):
                self.n = n
            def __hash__(self):
                return 7  # every Key collides: lookups compare
            def __eq__(self, other):
                if armed[0]:
                    armed[0] = False
                    cache.clear()  # drops the stored key the probe is comparing with
                return isinstance(other, Key) and other.n == self.n
        cache = LocalCache(16)
        for i in range(8):
            cache[Key(i)] = i
        armed[0] = True
        assert cache.get(Key(5)) is None  # the table emptied under the probe
        assert not armed[0] and len(cache) == 0
        for i in range(8):
            cache[Key(i)] = i
        armed[0] = True
        cache[Key(3)] = "new"
        assert cache.get(Key(3)) == "new" and len(cache) == 1
        check_whole(cache)
        print("eq ok")
    """,
    )
    assert "eq ok" in out


def test_an_uninitialised_or_reinitialised_cache_is_a_working_cache(impl):
    out = run_child(
        impl,
        """
        bare = LocalCache.__new__(LocalCache)
        bare.set("a", 1)
        assert bare.get("a") == 1 and bare.maxsize == 10_000 and bare.policy == "lru"
        check_whole(bare)
        cache = LocalCache(50, policy="s3fifo")
        for i in range(400):
            cache[i] = i
            cache.get(i // 2)  # reads, so entries move to main and the ghost fills
        cache.__init__(7, ttl=30, policy="s3fifo")
        assert len(cache) == 0 and cache.maxsize == 7 and cache.stats()["sets"] == 0
        for i in range(100):
            cache[i] = i
            cache.get(i // 3)
        assert len(cache) == 7
        check_whole(cache)
        # larger than before: the ghost sized for 50 once took 4,500 and the interpreter hung
        cache.__init__(5000, policy="s3fifo")
        for i in range(30_000):
            cache[i] = i
            cache.get(i // 2)
        assert len(cache) == 5000
        check_whole(cache)
        try:
            cache.__init__(-1)
        except ValueError:
            pass
        assert cache.maxsize == 5000  # a bad argument changed nothing
        print("init ok")
    """,
    )
    assert "init ok" in out


STRESS = """
    import random
    gc.set_threshold(1)
    deadline = time.monotonic() + 2.0
    clock = [0.0]  # moved by the workers, still once they stop (check_whole compares walks)
    cache = LocalCache(200, ttl=0.05, policy=POLICY, timer=lambda: clock[0])
    errors = []

    class Value:
        def __init__(self, n):
            self.n = n
            self.me = self  # a cycle: freed by the collector, at any allocation
        def __del__(self):
            cache.set(("del", self.n % 13), self.n % 97)
            cache.pop(("del", (self.n + 1) % 13), None)

    def on_collect(ref):
        cache.delete(("weak", id(ref) % 17))
        list(cache.items())

    refs = set()

    def worker(seed):
        rnd = random.Random(seed)
        try:
            while time.monotonic() < deadline:
                op = rnd.randrange(9)
                key = rnd.randrange(300)
                if op < 3:
                    value = Value(key)
                    refs.add(weakref.ref(value, on_collect))
                    cache[key] = value
                elif op == 3:
                    cache.get(key)
                elif op == 4:
                    for k, v in cache.items():
                        assert v is not None
                elif op == 5:
                    try:
                        cache.popitem()
                    except KeyError:
                        pass
                elif op == 6:
                    cache.set_many({(key, j): j for j in range(5)})
                elif op == 7:
                    clock[0] += 0.01
                    cache.evict_expired()
                else:
                    key in cache
                    list(reversed(cache))
                if len(refs) > 500:
                    refs.clear()
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    gc.set_threshold(700, 10, 10)
    assert not errors, errors[:3]
    check_whole(cache)
    print("stress ok", cache.stats()["sets"])
"""


@pytest.mark.parametrize("policy", ["lru", "s3fifo"])
def test_threads_finalizers_and_weakref_callbacks_under_a_busy_collector(impl, policy):
    out = run_child(impl, f"POLICY = {policy!r}\n" + textwrap.dedent(STRESS), timeout=120)
    sets = int(out.split("stress ok ")[1].split()[0])
    assert sets > 100  # the workers did run

"""tiercache.semantic: nearest-neighbour reuse of answers, per scope, on both tiers.

Two TieredCaches on one Redis stand for two processes (each has its own L1, subscriber and
indexes); one test uses a real second process."""

from __future__ import annotations

import asyncio
import itertools
import math
import multiprocessing
import string

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from tiercache import AsyncTieredCache, TieredCache
from tiercache.semantic import AsyncSemanticCache, HashedNgrams, SemanticCache, SemanticError

from .conftest import wait_until

QUESTION = "What is the capital of France?"


@pytest.fixture(params=["redis", "cluster"])
def l2_kind(request):
    return request.param


@pytest.fixture
def pair(make_cache):
    """Two semantic caches on two TieredCaches (two processes' worth of state)."""
    return SemanticCache(make_cache()), SemanticCache(make_cache())


def seen(semantic, context, scope, answer):
    """Wait until semantic answers context in scope with answer (None: with no match)."""

    def check():
        match = semantic.get(context, scope=scope)
        return (match.answer if match else None) == answer

    return wait_until(check)


# -- matching -------------------------------------------------------------------------------


NEAR = [  # at the default threshold (0.9) with the default embedding
    (QUESTION, "what is the capital of france"),  # casing and punctuation: 1.0
    (QUESTION, "What's the capital of France?"),  # 0.90
    ("How do I reset my password?", "how do i reset my password"),
    (
        "Summarise this article about climate change in three bullet points",
        "summarise this article about climate change in 3 bullet points",
    ),
]
FAR = [
    (QUESTION, "How do I bake sourdough bread?"),
    (QUESTION, "What is the capital of Germany?"),  # 0.80: one word decides
    (QUESTION, "What is the population of France?"),
    ("How do I reset my password?", "I forgot my login secret"),  # a paraphrase: n-grams cannot tell
    ("Translate 'good morning' to German", "Translate 'good morning' to Japanese and then explain the grammar"),
]


@pytest.mark.parametrize(("stored", "asked"), NEAR)
def test_near_duplicates_hit(pair, stored, asked):
    writer, _ = pair
    assert writer.set(stored, "the answer", scope="u1")
    match = writer.get(asked, scope="u1")
    assert match is not None and match.answer == "the answer" and match.context == stored
    assert writer.threshold <= match.similarity <= 1.0


@pytest.mark.parametrize(("stored", "asked"), FAR)
def test_unrelated_contexts_miss(pair, stored, asked):
    writer, _ = pair
    assert writer.set(stored, "the answer", scope="u1")
    assert writer.get(asked, scope="u1") is None


def test_the_nearest_of_several_answers(pair):
    writer, _ = pair
    writer.set("What is the capital of France?", "Paris", scope="u1")
    writer.set("What is the capital of Germany?", "Berlin", scope="u1")
    writer.set("What is the capital of Spain?", "Madrid", scope="u1")
    assert writer.get("what is the capital of germany", scope="u1").answer == "Berlin"
    assert writer.get("What is the capital of Spain", scope="u1").answer == "Madrid"
    assert writer.get("What is the capital of France?", scope="u1").similarity == pytest.approx(1.0)


def test_conversations_match_on_their_last_turns(make_cache):
    semantic = SemanticCache(make_cache(), turns=2)
    older = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi! How can I help?"}]
    recent = [
        {"role": "user", "content": "Which plan suits a team of five?"},
        {"role": "assistant", "content": "Team."},
    ]
    assert semantic.set([*older, *recent], "Team plan", scope="acme")
    other_start = [{"role": "user", "content": "good evening"}, *recent]
    match = semantic.get(other_start, scope="acme")  # the same last two turns: the same entry
    assert match is not None and match.similarity == pytest.approx(1.0) and match.context == [*older, *recent]
    assert semantic.get([*older, recent[0]], scope="acme") is None  # other last turns


# -- two processes ----------------------------------------------------------------------------


def test_another_process_finds_an_entry_and_sees_it_replaced_and_deleted(pair):
    writer, reader = pair
    assert reader.get(QUESTION, scope="u1") is None  # the reader has loaded the (empty) scope
    assert writer.set(QUESTION, "Paris", scope="u1", metadata={"model": "m1"})
    assert seen(reader, QUESTION, "u1", "Paris")
    match = reader.get(QUESTION, scope="u1")
    assert match.metadata == {"model": "m1"} and match.scope == "u1"
    assert writer.set(QUESTION, "Paris, France", scope="u1")  # the same context: replaced
    assert seen(reader, QUESTION, "u1", "Paris, France")
    assert writer.delete(QUESTION, scope="u1")
    assert seen(reader, QUESTION, "u1", None)
    assert not writer.delete(QUESTION, scope="u1")  # nothing left to delete


def test_ttl_expiry_applies_on_both_tiers(pair, raw_redis):
    writer, reader = pair
    assert writer.set(QUESTION, "Paris", scope="u1", ttl=0.3)
    assert seen(reader, QUESTION, "u1", "Paris")  # in the reader's index now
    assert seen(reader, QUESTION, "u1", None)  # past its expiry: the index ignores it
    assert seen(writer, QUESTION, "u1", None)
    engine = writer._engine
    assert not raw_redis.exists(engine.keys("u1", engine.entry_id(QUESTION))[2])  # Redis expired it


def test_clear_is_seen_everywhere_and_touches_no_other_scope(pair):
    writer, reader = pair
    writer.set(QUESTION, "Paris", scope="u1")
    writer.set(QUESTION, "Paris (u2)", scope="u2")
    assert seen(reader, QUESTION, "u1", "Paris")
    assert writer.clear("u1")
    assert seen(reader, QUESTION, "u1", None)
    assert reader.get(QUESTION, scope="u2").answer == "Paris (u2)"
    assert writer.set(QUESTION, "Paris again", scope="u1")  # a new log after the clear
    assert seen(reader, QUESTION, "u1", "Paris again")


def _write_from_another_process(url, name, scope, answer):
    with TieredCache.from_url(url, name=name) as cache:
        assert SemanticCache(cache).set(QUESTION, answer, scope=scope)


@pytest.mark.parametrize("l2_kind", ["redis"])
def test_a_real_second_process(make_cache, l2_url, cache_name):
    reader = SemanticCache(make_cache())
    assert reader.get(QUESTION, scope="u1") is None
    process = multiprocessing.get_context("spawn").Process(
        target=_write_from_another_process, args=(l2_url, cache_name, "u1", "from the other process")
    )
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert seen(reader, QUESTION, "u1", "from the other process")


def test_deletions_trimmed_from_the_log_still_reach_an_old_index(make_cache, raw_redis):
    writer, reader = SemanticCache(make_cache()), SemanticCache(make_cache())
    contexts = [f"question number {i} about the weather in city {i}" for i in range(30)]
    for context in contexts:
        writer.set(context, context.upper(), scope="u1")
    assert seen(reader, contexts[0], "u1", contexts[0].upper())  # the reader's index has all 30
    reader_index = reader._engine.indexes["u1"]
    for context in contexts[:20]:
        writer.delete(context, scope="u1")
    # the writer's next look trims the dead ids (and raises the floor past the reader's index)
    assert writer.get(contexts[25], scope="u1").answer == contexts[25].upper()
    log_key = writer._engine.view("u1").redis_key("%log")
    assert raw_redis.zcard(log_key) == 10 + 3  # 10 live ids, the version, the floor, the generation
    assert reader_index.version < raw_redis.zscore(log_key, "%floor")
    for context in contexts[:20]:
        assert seen(reader, context, "u1", None)
    assert reader.get(contexts[21], scope="u1").answer == contexts[21].upper()


# -- scopes ---------------------------------------------------------------------------------

examples = itertools.count()
scopes = st.text(alphabet=string.ascii_letters + string.digits + ":%@{}*?[]é- ", min_size=1, max_size=12)


@pytest.mark.parametrize("l2_kind", ["redis"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(scopes, min_size=2, max_size=6, unique=True))
def test_a_lookup_never_returns_another_scopes_entry(make_cache, cache_name, names):
    semantic = SemanticCache(make_cache(name=f"{cache_name}-{next(examples)}"))
    owner = names[0]
    assert semantic.set(QUESTION, f"for {owner}", scope=owner)
    for other in names[1:]:
        assert semantic.get(QUESTION, scope=other) is None  # the same words, another scope
    for other in names[1:]:
        semantic.set(QUESTION, f"for {other}", scope=other)
    for name in names:
        match = semantic.get(QUESTION, scope=name)
        assert match.answer == f"for {name}" and match.scope == name


def test_an_entry_moved_into_another_scope_in_redis_is_refused(pair, raw_redis):
    writer, reader = pair
    writer.set(QUESTION, "secret of u1", scope="u1")
    writer.set("something else entirely for u2", "u2's", scope="u2")
    # someone copies u1's entry under u2's key for the same context
    engine = writer._engine
    entry_id = engine.entry_id(QUESTION)
    u1_key = engine.keys("u1", entry_id)[2]
    u2_key = engine.keys("u2", entry_id)[2]
    raw_redis.set(u2_key, raw_redis.get(u1_key))
    raw_redis.zadd(engine.view("u2").redis_key("%log"), {entry_id: 1000})
    raw_redis.zadd(engine.view("u2").redis_key("%log"), {"%v": 1000})
    assert reader.get(QUESTION, scope="u2") is None
    assert reader.stats()["bad_entries"] == 1


# -- bad input ------------------------------------------------------------------------------


def test_bad_contexts_and_scopes_are_refused(make_cache):
    semantic = SemanticCache(make_cache())
    for context, message in [
        ("", "context is empty"),
        ("   \n", "context is empty"),
        ([], "empty list of turns"),
        ([{"role": "user"}], "a turn must be a str or a dict with a str 'content'"),
        (42, "context must be a str or a list of turns"),
        (b"bytes", "context must be a str or a list of turns"),
    ]:
        with pytest.raises(SemanticError, match=message):
            semantic.get(context, scope="u1")
        with pytest.raises(SemanticError, match=message):
            semantic.set(context, "answer", scope="u1")
    for scope in ("", None, 7):
        with pytest.raises(SemanticError, match="scope must be a non-empty str"):
            semantic.get(QUESTION, scope=scope)
    with pytest.raises(SemanticError, match="msgpack-serializable"):
        semantic.set(QUESTION, object(), scope="u1")
    with pytest.raises(SemanticError, match="metadata must be a dict"):
        semantic.set(QUESTION, "a", scope="u1", metadata=["x"])
    with pytest.raises(ValueError, match="ttl must be"):
        semantic.set(QUESTION, "a", scope="u1", ttl=-1)
    assert semantic.get(QUESTION, scope="u1") is None  # nothing was stored by the refused calls


def test_bad_vectors_from_embed_are_refused_with_the_reason(make_cache):
    vectors = iter([[1.0, 0.0, 0.0], [1.0, 0.0], [float("nan"), 1.0, 0.0], [0.0, 0.0, 0.0], "abc", [[1.0]]])
    semantic = SemanticCache(make_cache(), embed=lambda text: next(vectors))
    assert semantic.set(QUESTION, "Paris", scope="u1")  # three dimensions, from now on
    for message in (
        "embed returned 2 dimensions, but this cache's vectors have 3",
        "NaN or infinite",
        "zero vector",
        "not a vector of numbers",
        "1-d vector",
    ):
        with pytest.raises(SemanticError, match=message):
            semantic.get(QUESTION, scope="u1")


def test_bad_settings_are_refused(make_cache):
    cache = make_cache()
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(cache, threshold=1.5)
    with pytest.raises(ValueError, match="turns"):
        SemanticCache(cache, turns=0)
    with pytest.raises(TypeError, match="embed must be a function"):
        SemanticCache(cache, embed="model")
    with TieredCache.in_memory(name="m") as memory, pytest.raises(TypeError, match="needs a TieredCache"):
        SemanticCache(memory)
    with pytest.raises(ValueError, match="dim"):
        HashedNgrams(dim=4)


def test_the_default_embedding_is_the_same_in_every_process():
    vector = HashedNgrams()(QUESTION)
    assert vector.shape == (384,) and vector.dtype == np.float32
    # crc32 of the n-grams: a fixed function, never hash() (which differs between processes)
    assert np.array_equal(vector, HashedNgrams()(QUESTION))
    assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-6)
    assert float(vector @ HashedNgrams()(QUESTION.upper())) == pytest.approx(1.0)  # casing is ignored


# -- failures and figures -------------------------------------------------------------------


def test_redis_down_is_a_miss_and_a_failed_write(own_redis, cache_name):
    with TieredCache.from_url(own_redis.url, name=cache_name, breaker_threshold=1) as cache:
        semantic = SemanticCache(cache)
        assert semantic.set(QUESTION, "Paris", scope="u1")
        own_redis.kill()
        assert semantic.get("a new scope's question", scope="u2") is None
        assert semantic.set("another question", "x", scope="u1") is False
        assert semantic.stats()["errors"] >= 1


@pytest.mark.parametrize("l2_kind", ["redis"])
def test_metrics(make_cache):
    semantic = SemanticCache(make_cache(), name="answers")
    registry = CollectorRegistry()
    semantic.register_metrics(registry)
    semantic.set(QUESTION, "Paris", scope="u1")
    semantic.get(QUESTION, scope="u1")
    semantic.get("How do I bake sourdough bread?", scope="u1")
    page = generate_latest(registry).decode()
    name = semantic._engine.cache.name
    labels = f'cache="{name}",result="hit",semantic="answers"'
    assert f"tiercache_semantic_requests_total{{{labels}}} 1.0" in page
    assert f'tiercache_semantic_entries{{cache="{name}",semantic="answers",tier="l1"}} 1.0' in page
    assert f'tiercache_semantic_entries{{cache="{name}",semantic="answers",tier="l2"}} 1.0' in page
    assert f'tiercache_semantic_similarity_count{{cache="{name}",semantic="answers"}} 1.0' in page


# -- asyncio --------------------------------------------------------------------------------


@pytest.mark.parametrize("l2_kind", ["redis"])
def test_the_async_twin(l2_url, cache_name):
    async def embed(text):  # a coroutine, as a model client would be
        await asyncio.sleep(0)
        return HashedNgrams()(text)

    async def scenario():
        async with (
            AsyncTieredCache.from_url(l2_url, name=cache_name) as one,
            AsyncTieredCache.from_url(l2_url, name=cache_name) as two,
        ):
            await one.wait_ready(10)
            await two.wait_ready(10)
            writer, reader = AsyncSemanticCache(one), AsyncSemanticCache(two, embed=embed)
            assert await reader.get(QUESTION, scope="u1") is None
            # a set whose caller is cancelled once it has begun still lands and is announced
            task = asyncio.ensure_future(writer.set(QUESTION, "Paris", scope="u1"))
            await asyncio.sleep(0)  # the set is under way: its plan runs in a shielded task
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(500):
                match = await reader.get(QUESTION, scope="u1")
                if match:
                    break
                await asyncio.sleep(0.01)
            assert match is not None and match.answer == "Paris"
            assert await writer.delete(QUESTION, scope="u1")
            for _ in range(500):
                if await reader.get(QUESTION, scope="u1") is None:
                    break
                await asyncio.sleep(0.01)
            assert await reader.get(QUESTION, scope="u1") is None
            assert await writer.clear("u1")

    asyncio.run(scenario())


def test_an_index_of_a_cleared_scope_reloads_even_once_versions_caught_up(pair):
    writer, reader = pair
    old = [f"an old question about topic number {i}" for i in range(5)]
    for context in old:
        writer.set(context, "old", scope="u1")
    assert seen(reader, old[0], "u1", "old")  # the reader's index is at version 5
    writer.clear("u1")
    new = [f"a new question about subject number {i}" for i in range(6)]
    for context in new:
        writer.set(context, "new", scope="u1")  # the new log's version passes 5 again
    for context in old:
        assert seen(reader, context, "u1", None)
    for context in new:
        assert seen(reader, context, "u1", "new")


def test_the_users_writer_and_loader_never_see_the_semantic_caches_keys(make_cache):
    written, loaded = [], []
    cache = make_cache(writer=lambda key, value: written.append(key), loader=lambda key: loaded.append(key))
    semantic = SemanticCache(cache)
    assert semantic.set(QUESTION, "Paris", scope="u1")
    assert semantic.get(QUESTION, scope="u1").answer == "Paris"
    assert semantic.delete(QUESTION, scope="u1") and semantic.clear("u1")
    assert written == [] and loaded == []


def test_symbols_that_carry_meaning_are_not_ignored_by_the_default_embedding():
    embed = HashedNgrams()
    for one, other in [
        ("What is C++?", "What is C#?"),
        ("2+2", "2*2"),
        ("x > 5", "x < 5"),
        ("-5 degrees", "5 degrees"),
    ]:
        assert float(embed(one) @ embed(other)) < 0.9, (one, other)


def test_edge_vectors_and_thresholds(make_cache):
    vectors = {"big": [1e300] * 8, "tiny": [1e-300] * 8, "ints": [1, 2, 3, 4, 5, 6, 7, 8]}
    semantic = SemanticCache(make_cache(), embed=lambda text: vectors[text], threshold=1.0)
    assert semantic.set("big", "a big one", scope="u1")
    match = semantic.get("tiny", scope="u1")  # the same direction: similarity 1.0 at threshold 1.0
    assert match is not None and match.answer == "a big one"
    assert semantic.get("ints", scope="u1") is None
    with pytest.raises(SemanticError, match="no lone surrogates"):
        semantic.get("big", scope="\ud800")


def test_answers_with_any_map_keys_come_back(pair):
    writer, reader = pair
    assert writer.set(QUESTION, {1: "one", 2.5: "x"}, scope="u1", metadata={7: "seven"})
    match = reader.get(QUESTION, scope="u1")
    assert match.answer == {1: "one", 2.5: "x"} and match.metadata == {7: "seven"}


def test_a_change_that_redis_refuses_changes_nothing_and_a_retry_works(own_redis, cache_name):
    with (
        TieredCache.from_url(own_redis.url, name=cache_name) as one,
        TieredCache.from_url(own_redis.url, name=cache_name) as two,
    ):
        one.wait_ready(10)
        two.wait_ready(10)
        writer, reader = SemanticCache(one), SemanticCache(two)
        assert writer.set(QUESTION, "Paris", scope="u1")
        assert seen(reader, QUESTION, "u1", "Paris")
        with redis.Redis.from_url(own_redis.url) as raw:
            raw.config_set("maxmemory-policy", "noeviction")
            raw.config_set("maxmemory", 1)
            try:
                assert writer.delete(QUESTION, scope="u1") is False  # the whole change refused
                assert writer.set(QUESTION, "Lyon", scope="u1") is False
            finally:
                raw.config_set("maxmemory", 0)
        assert reader.get(QUESTION, scope="u1").answer == "Paris"  # nothing half-done anywhere
        assert writer.delete(QUESTION, scope="u1")  # the retry
        assert seen(reader, QUESTION, "u1", None)


def test_a_refresh_that_fails_part_way_does_not_renew_trust_in_the_index(pair, monkeypatch):
    writer, reader = pair
    writer.set(QUESTION, "Paris", scope="u1")
    assert seen(reader, QUESTION, "u1", "Paris")
    writer.delete(QUESTION, scope="u1")
    assert wait_until(lambda: not reader._engine.view("u1").cached_locally("%fresh"))
    real = type(reader)._do

    def failing(self, request):
        if type(request).__name__ == "ReadLog":
            raise redis.TimeoutError("stalled")
        return real(self, request)

    monkeypatch.setattr(type(reader), "_do", failing)
    assert reader.get(QUESTION, scope="u1") is None  # a failed lookup is a miss
    monkeypatch.setattr(type(reader), "_do", real)
    assert "u1" not in reader._engine.indexes  # dropped: the token it read is not trusted
    assert reader.get(QUESTION, scope="u1") is None  # the next lookup loads the scope whole


def test_a_process_with_another_dimension_leaves_the_entries_alone(make_cache, raw_redis):
    writer = SemanticCache(make_cache())
    other = SemanticCache(make_cache(), embed=lambda text: [1.0, 0.0, 0.5])  # 3 dimensions
    writer.set(QUESTION, "Paris", scope="u1")
    assert other.get(QUESTION, scope="u1") is None and other.stats()["bad_entries"] == 1
    assert raw_redis.zscore(writer._engine.view("u1").redis_key("%log"), writer._engine.entry_id(QUESTION))
    assert SemanticCache(make_cache()).get(QUESTION, scope="u1").answer == "Paris"


def test_expired_ids_leave_the_log_as_changes_go_on(make_cache, raw_redis):
    import time

    semantic = SemanticCache(make_cache())
    for i in range(60):
        semantic.set(f"a short-lived question number {i}", "x", scope="u1", ttl=0.2)
    time.sleep(0.3)
    semantic.set(QUESTION, "Paris", scope="u1")  # each change forgets up to 50 expired ids
    semantic.set("another question that stays", "y", scope="u1")
    log = raw_redis.zrange(semantic._engine.view("u1").redis_key("%log"), 0, -1)
    assert len([member for member in log if not member.startswith(b"%")]) == 2


def test_an_expired_replacement_swept_from_the_log_does_not_bring_back_the_old_answer(pair):
    import time

    writer, reader = pair
    writer.set(QUESTION, "old answer", scope="u1")
    assert seen(reader, QUESTION, "u1", "old answer")
    writer.set(QUESTION, "new answer", scope="u1", ttl=0.3)  # the reader does not look meanwhile
    time.sleep(0.4)
    writer.set("an unrelated question that stays", "x", scope="u1", ttl=60)  # sweeps the expired id
    assert seen(reader, QUESTION, "u1", None)  # neither the expired new answer nor the old one


def test_the_expiry_set_never_outlives_the_log(make_cache, raw_redis):
    import time

    semantic = SemanticCache(make_cache())
    engine = semantic._engine
    semantic.set("a question kept for a while", "a", scope="u1", ttl=3)
    semantic.delete("a question kept for a while", scope="u1")
    semantic.set("a question kept briefly", "b", scope="u1", ttl=0.2)
    log, exp, _ = engine.keys("u1", "any")
    exp_left = raw_redis.pttl(exp)
    assert 0 < exp_left <= raw_redis.pttl(log) + 50  # read one after the other: a few ms apart
    time.sleep(0.3)
    semantic.set("a question without expiry", "c", scope="u1", ttl=float("inf"))
    assert raw_redis.pttl(log) == -1 and raw_redis.pttl(exp) in (-1, -2)


def test_empty_scopes_cost_little_and_indexes_are_bounded(make_cache, monkeypatch):
    from tiercache import semantic as module

    monkeypatch.setattr(module, "MAX_SCOPES", 50)
    semantic = SemanticCache(make_cache())
    semantic.set(QUESTION, "Paris", scope="kept")
    for i in range(120):
        assert semantic.get(QUESTION, scope=f"user:{i}") is None
    assert len(semantic._engine.indexes) == 50 and semantic.stats()["l1_bytes"] < 50 * 1024
    assert semantic.get(QUESTION, scope="kept").answer == "Paris"  # evicted, then loaded again


@pytest.mark.parametrize("l2_kind", ["redis"])
def test_a_forked_child_is_not_stuck_on_a_lock_a_parent_thread_held(make_cache):
    import os

    semantic = SemanticCache(make_cache())
    semantic.set(QUESTION, "Paris", scope="u1")
    assert semantic.get(QUESTION, scope="u1").answer == "Paris"
    held = semantic._lock_of("u1")
    held.acquire()  # as a parent thread part-way through a refresh would hold it at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: its lookup must neither hang nor use a half-changed index
            ok = semantic.get(QUESTION, scope="u1")
            os._exit(0 if ok is not None and ok.answer == "Paris" else 1)
    finally:
        held.release()
    statuses = []

    def ended():
        done, status = os.waitpid(pid, os.WNOHANG)
        statuses.append(status)
        return done == pid

    if not wait_until(ended, timeout=30):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on a lock held at the fork")
    assert os.waitstatus_to_exitcode(statuses[-1]) == 0

"""How a plan's requests are carried out on Redis Cluster, for both drivers.

A plan's requests are written for one Redis: an MGET of any keys, a MULTI over several keys,
a pipeline that ends with the write's PUBLISH. On a cluster, a command may only name keys of
one hash slot, a MULTI runs on one node, and redis-py refuses PUBLISH inside a pipeline. So
a driver on a cluster client carries out each request through ``carry(shared, request)``, a
plan of its own whose steps are cluster-safe (each command single-slot, each MULTI within one
slot, PUBLISH alone), sent as they are:

* An MGET is split by slot and sent as one pipeline (redis-py sends one batch per node, all
  at once) and the replies put back in order. A node that fails fails only its keys: they
  read as misses (counted as L2 errors; the breaker is told only if every node failed).
* A pipeline keeps its commands in order; multi-key DEL and UNLINK are split by slot (a
  cluster pipeline of redis-py refuses them whole) and their counts summed.
* A MULTI is split into one MULTI per slot, in the order the slots first appear, so a write's
  tag filings (core/tags.py) precede its SETs as on one Redis.
* The invalidation (SPUBLISH, to the node of the cache's channel) goes after everything else
  has been answered, never before: a process that drops its L1 copy must not read the old
  value back from a node that has not applied the write yet. It is sent even when the write
  failed or was cancelled (its outcome is unknown, and the message is numbered: receivers
  must see no gap). When only the SPUBLISH fails, the write stands and is reported done.

Why sharded pub/sub and not classic PUBLISH (which a script on the key's node could send in
the same round trip as the write): README, Redis Cluster and Sentinel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..codec import key_slot
from .requests import PTTL, Command, Delete, Eval, Get, IncrBy, MGet, Pipeline, Plan, Publish, Set, Unlink

if TYPE_CHECKING:
    from .shared import Shared


def slot_of(command: Command) -> int | None:
    """The slot of the keys command names (a script's keys share one); None for none."""
    match command:
        case Get(key) | Set(key) | PTTL(key) | IncrBy(key):
            return key_slot(key)
        case Eval(_, keys) if keys:
            return key_slot(keys[0])
        case Delete(keys) | Unlink(keys) | MGet(keys) if keys:
            return key_slot(keys[0])
    return None


def request_slot(request: Command | Pipeline) -> int | None:
    """The slot whose master a request is mostly about (its breaker's): its own, or its
    first keyed command's; None if it names no key."""
    if isinstance(request, Pipeline):
        return next((slot for slot in map(slot_of, request.commands) if slot is not None), None)
    return slot_of(request)


def _by_slot(keys: tuple[bytes, ...] | list[bytes]) -> dict[int, list[bytes]]:
    groups: dict[int, list[bytes]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)
    return groups


def _parts(command: Command) -> list[Command]:
    """command as single-slot commands (itself, if it is one)."""
    match command:
        case Delete(keys) | Unlink(keys) | MGet(keys):
            groups = _by_slot(keys)
            if len(groups) > 1:
                if isinstance(command, MGet):
                    return [MGet(part) for part in groups.values()]
                return [type(command)(tuple(part)) for part in groups.values()]
    return [command]


def _joined(command: Command, replies: list[Any]) -> Any:
    """The reply command would have had, from its parts' replies (in _parts' order)."""
    if len(replies) == 1:
        return replies[0]
    if isinstance(command, MGet):
        values = dict(
            zip((key for part in _by_slot(command.keys).values() for key in part), _flat(replies), strict=True)
        )
        return [values[key] for key in command.keys]
    return sum(int(reply) for reply in replies)


def _flat(replies: list[Any]) -> list[Any]:
    return [value for reply in replies for value in reply]


def carry(shared: Shared, request: Command | Pipeline, master_of: Callable[[int], str | None]) -> Plan[Any]:
    """request carried out in cluster-safe steps (this module's docstring); yields Commands
    and Pipelines whose commands each name one slot (a MULTI: all the same one), and raises
    what the client raised. A Pipeline step's result is its replies with errors in place.
    master_of(slot) names the master that serves slot (None if none does)."""
    if isinstance(request, MGet):
        return (yield from _mget(shared, request, master_of))
    if not isinstance(request, Pipeline):
        parts = _parts(request)
        if len(parts) == 1:
            return (yield request)
        replies = yield Pipeline(tuple(parts), request.op)
        _raise_first(replies)
        return _joined(request, replies)
    publishes = [command for command in request.commands if isinstance(command, Publish)]
    others: list[Command] = [command for command in request.commands if not isinstance(command, Publish)]
    try:
        if request.transaction:
            results = yield from _transactions(request.op, others)
        else:
            results = yield from _pipelined(request.op, others)
    except GeneratorExit:  # the plan is being closed: nothing more can be sent
        raise
    except BaseException:
        # The write's outcome is unknown (an error, a timeout, a cancellation): announce it
        # all the same, then fail as it did. The drivers throw every exception in here and
        # the asyncio one shields the steps from a cancelled caller, so this runs.
        for publish in publishes:
            try:
                yield publish
            except Exception as exc:
                shared.l2_partly_failed("publish", exc)
        raise
    published = []
    for publish in publishes:
        try:
            published.append((yield publish))
        except shared.errors.unavailable as exc:
            # The write stands, so it is not reported failed (a caller would repeat an incr).
            # Receivers whose channel node is down are disconnected and have emptied L1; one
            # that missed only this message learns of the gap from the origin's next one, or
            # drops the key within its L1 TTL (invariant 3).
            shared.l2_partly_failed("publish", exc)
            published.append(0)
    # The replies in the request's order: the publishes were its last commands.
    return results + published


def _pipelined(op: str, commands: list[Command]) -> Plan[list[Any]]:
    """commands in one pipeline (multi-slot ones split); their replies; the first error raised."""
    split = [_parts(command) for command in commands]
    if not commands:
        return []
    replies = yield Pipeline(tuple(part for parts in split for part in parts), op)
    _raise_first(replies)
    results, at = [], 0
    for command, parts in zip(commands, split, strict=True):
        results.append(_joined(command, replies[at : at + len(parts)]))
        at += len(parts)
    return results


def _transactions(op: str, commands: list[Command]) -> Plan[list[Any]]:
    """commands as one MULTI per slot, slots in order of first appearance; their replies in
    commands' order; the first error raised (the MULTIs before it stand, as a pipeline's
    commands before an error do)."""
    groups: dict[int | None, list[tuple[int, int, Command]]] = {}
    split = [_parts(command) for command in commands]
    for index, parts in enumerate(split):
        for number, part in enumerate(parts):
            groups.setdefault(slot_of(part), []).append((index, number, part))
    replies: list[list[Any]] = [[None] * len(parts) for parts in split]
    for members in groups.values():
        answered = yield Pipeline(tuple(part for _, _, part in members), op, transaction=True)
        _raise_first(answered)
        for (index, number, _), reply in zip(members, answered, strict=True):
            replies[index][number] = reply
    return [_joined(command, mine) for command, mine in zip(commands, replies, strict=True)]


def _mget(shared: Shared, request: MGet, master_of: Callable[[int], str | None]) -> Plan[list[Any]]:
    """MGET by slot in one pipeline; if a master fails it (redis-py's cluster pipeline then
    fails whole), again one pipeline per master, and the keys of a master that fails read
    as misses. Every master failing fails the call."""
    groups = _by_slot(request.keys)
    if len(groups) == 1:
        found: list[Any] = yield request
        return found
    parts = {slot: MGet(keys) for slot, keys in groups.items()}
    values: dict[bytes, Any] = {}
    try:
        replies = yield Pipeline(tuple(parts.values()), request.op)
        _raise_first(replies)
    except shared.errors.unavailable:
        by_master: dict[str | None, list[MGet]] = {}
        for slot, part in parts.items():
            by_master.setdefault(master_of(slot), []).append(part)
        failures = []
        for own in by_master.values():
            try:
                replies = yield Pipeline(tuple(own), request.op)
                _raise_first(replies)
            except shared.errors.unavailable as exc:
                failures.append(exc)
                replies = [[None] * len(part.keys) for part in own]
            for part, reply in zip(own, replies, strict=True):
                values.update(zip(part.keys, reply, strict=True))
        if len(failures) == len(by_master):
            raise failures[0] from None
        for failure in failures:
            shared.l2_partly_failed(request.op, failure)
    else:
        for part, reply in zip(parts.values(), replies, strict=True):
            values.update(zip(part.keys, reply, strict=True))
    return [values[key] for key in request.keys]


def _raise_first(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply


def split_riders(riders: tuple[Command, ...]) -> tuple[tuple[Command, ...], tuple[Command, ...]]:
    """An Update's riders: those that go in its MULTI, and the PUBLISH to send after EXEC."""
    inside = tuple(rider for rider in riders if not isinstance(rider, Publish))
    after = tuple(rider for rider in riders if isinstance(rider, Publish))
    return inside, after

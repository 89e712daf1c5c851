"""The README's Quickstart and chat-service example run as written (on a private Redis)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
THE_READMES_REDIS = "redis://127.0.0.1:6379/0"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README's section (a `## ` heading) in order."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], re.S)
    assert blocks, f"no python block under ## {section}"
    return blocks


@pytest.fixture
def run_block(redis_server, capsys):
    def run(code: str) -> str:
        assert THE_READMES_REDIS in code  # each block points at the Redis a reader has
        exec(compile(code.replace(THE_READMES_REDIS, redis_server.url), "README.md", "exec"), {})
        return capsys.readouterr().out

    return run


def test_quickstart_sync(run_block):
    out = run_block(python_blocks("Quickstart")[0])
    assert out.strip() == "0.5"  # get_or_load missed both tiers, get hit L1


def test_quickstart_async(run_block):
    out = run_block(python_blocks("Quickstart")[1])
    assert out.strip() == "{'id': 'user:1', 'name': 'Ada'}"


def test_the_chat_service_example(run_block, redis_server):
    import redis

    out = run_block(python_blocks("Example: a chat service")[0])
    assert out.strip() == "{'name': 'Ada'} ['user', 'assistant']"
    with redis.Redis.from_url(redis_server.url) as client:
        assert not client.keys("tc:chat:@acme:@u42:*")  # signed out: the user's keys are gone
        assert client.keys("tc:chat:acme:products")  # the tenant's catalogue stays

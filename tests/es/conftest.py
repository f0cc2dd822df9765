"""Fixtures for tests against a real Elasticsearch (started by scripts/es.sh).

- `es_url` (session): `$ES_URL` when set (`make test` starts one instance for the whole
  run), else an instance of our own on a free port, stopped at the end of the session.
- `es`: a synchronous client on it; `es_prefix`: an index prefix unique to the test,
  whose indices and template are deleted afterwards, so tests never collide.
- `private_es` (session): one private instance (own port, own state directory) with
  x-pack security on (user `elastic`, password PRIVATE_PASSWORD), for the auth tests and
  the fault tests that stop Elasticsearch in the middle of a load. A test that stops it
  starts it again; each start costs tens of seconds on a small box, hence one per run.
- `es_instance_factory`: further private instances, stopped at the end of the test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from .helpers import PRIVATE_PASSWORD, EsInstance, new_instance


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    url = os.environ.get("ES_URL")
    if url:
        yield url.rstrip("/")
        return
    instance = new_instance()
    try:
        yield instance.start()
    finally:
        instance.stop()
        shutil.rmtree(instance.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def es(es_url: str) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_url, request_timeout=30)
    yield client
    client.close()


@pytest.fixture
def es_prefix(es: Elasticsearch) -> Iterator[str]:
    """An index prefix no other test uses; its indices and template go afterwards.

    All prefixes have the same length, so no test's `<prefix>-*` pattern overlaps
    another's (see collector.estemplate.index_template on priorities).
    """
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    es.options(ignore_status=404).indices.delete(index=f"{prefix}-*", expand_wildcards="all")
    es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-template")


@pytest.fixture(scope="session")
def private_es() -> Iterator[EsInstance]:
    instance = new_instance(security=True, password=PRIVATE_PASSWORD)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(instance.state_dir, ignore_errors=True)


@pytest.fixture
def es_instance_factory() -> Iterator[Callable[..., EsInstance]]:
    """Start private instances: `factory(security=True, password="...")`."""
    started: list[EsInstance] = []

    def make(**kwargs: Any) -> EsInstance:
        instance = new_instance(**kwargs)
        started.append(instance)
        instance.start()
        return instance

    yield make
    for instance in started:
        try:
            instance.stop()
        finally:
            shutil.rmtree(instance.state_dir, ignore_errors=True)

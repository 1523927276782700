"""Fixtures: emulators on 127.0.0.1 and a fresh store per test on every backend.

Emulator endpoints come from ``CLOUDCKPT_TEST_S3_ENDPOINT`` / ``CLOUDCKPT_TEST_GCS_ENDPOINT`` /
``CLOUDCKPT_TEST_AZURE_ENDPOINT`` (set by ``make test``, or pointed at docker-compose's MinIO,
fake-gcs-server and Azurite); when unset, the missing emulator is started here for the session
and stopped by PID at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from cloudckpt.storage import Store, open_store
from cloudckpt.testing import emulators

# Property/fuzz tests: a CI-sized default; `pytest --hypothesis-profile=long` for the long run.
settings.register_profile("ci", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=5_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci")

BACKENDS = ["memory", "local", "s3", "gcs", "az"]
CLOUDS = ["s3", "gcs", "az"]
PROJECT = Path(__file__).resolve().parent.parent


class Emulators:
    """Lazily started emulators, one per cloud, shared by the session."""

    def __init__(self, logdir: Path) -> None:
        self._logdir = logdir
        self._started: list[emulators.Emulator] = []
        self.endpoints: dict[str, str] = {}

    def endpoint(self, name: str) -> str:
        if name not in self.endpoints:
            env = os.environ.get(emulators.ENV_VARS[name])
            if env:
                self.endpoints[name] = env
            else:
                emu = emulators.start(name, self._logdir, PROJECT)
                self._started.append(emu)
                self.endpoints[name] = emu.endpoint
            if name == "gcs":
                os.environ["STORAGE_EMULATOR_HOST"] = self.endpoints[name]
        return self.endpoints[name]

    def options(self, name: str) -> dict[str, Any]:
        """storage_options for ``name`` (``s3``/``gcs``/``az``)."""
        ep = self.endpoint(name)
        if name == "s3":
            return {"endpoint_url": ep, "key": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                    "secret": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}
        if name == "az":
            return {"connection_string": emulators.azurite_connection_string(ep)}
        return {}

    def stop(self) -> None:
        for emu in self._started:
            emu.stop()


@pytest.fixture(scope="session")
def emus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    e = Emulators(tmp_path_factory.mktemp("emulator-logs"))
    yield e
    e.stop()


def bucket_name(backend: str) -> str:
    # dotted bucket names on S3 on purpose (s3torchconnector #295)
    tag = uuid.uuid4().hex[:12]
    return f"ck.test-{tag}" if backend == "s3" else f"cktest-{tag}"


def make_bucket(emus: Emulators, backend: str, bucket: str) -> dict[str, Any]:
    """Create ``bucket`` on an emulator; returns the storage options to reach it."""
    opts = emus.options(backend)
    scheme = {"s3": "s3", "gcs": "gs", "az": "az"}[backend]
    open_store(f"{scheme}://{bucket}", storage_options=opts).fs.mkdir(bucket)  # type: ignore[attr-defined]
    return opts


class StoreFactory:
    """Creates stores rooted at fresh, empty locations on one backend."""

    def __init__(self, backend: str, emus: Emulators, tmp_path: Path) -> None:
        self.backend, self._emus, self._tmp = backend, emus, tmp_path
        self.bucket: str | None = None
        self.options: dict[str, Any] = {}

    def uri(self, prefix: str = "") -> str:
        prefix = prefix or f"p-{uuid.uuid4().hex[:8]}"
        if self.backend == "memory":
            return f"memory://{uuid.uuid4().hex[:12]}/{prefix}"
        if self.backend == "local":
            return str(self._tmp / "store" / prefix)
        if self.bucket is None:
            self.bucket = bucket_name(self.backend)
            self.options = make_bucket(self._emus, self.backend, self.bucket)
        scheme = {"s3": "s3", "gcs": "gs", "az": "az"}[self.backend]
        return f"{scheme}://{self.bucket}/{prefix}"

    def open(self, prefix: str = "", **kw: Any) -> Store:
        uri = self.uri(prefix)
        return open_store(uri, storage_options=self.options, **kw)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stores(backend: str, emus: Emulators, tmp_path: Path) -> StoreFactory:
    return StoreFactory(backend, emus, tmp_path)


@pytest.fixture
def store(stores: StoreFactory) -> Store:
    return stores.open()


@pytest.fixture(params=CLOUDS)
def cloud_stores(request: pytest.FixtureRequest, emus: Emulators, tmp_path: Path) -> StoreFactory:
    return StoreFactory(str(request.param), emus, tmp_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``emulator`` every test that needs a storage emulator or runs whole systems:
    everything under tests/system/, and any test on a cloud backend or using the emulators
    directly. ``pytest -m "not emulator"`` then runs the fast unit layer alone."""
    system = PROJECT / "tests" / "system"
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        names = set(getattr(item, "fixturenames", ()))
        direct = set(getattr(getattr(item, "function", None), "__code__", None).co_varnames
                     if hasattr(item, "function") else ())
        if (system in Path(str(item.fspath)).parents or params.get("backend") in CLOUDS
                or "cloud_stores" in names or "emus" in direct
                or any(p in CLOUDS for p in params.values() if isinstance(p, str))):
            item.add_marker(pytest.mark.emulator)

"""The places where cloudckpt relies on another library's private API, checked against the
installed versions: an upgrade that breaks one fails here, loudly, instead of in production."""

from __future__ import annotations

import pytest


def test_gcsfs_request_retries_can_be_switched_off() -> None:
    gcsfs = pytest.importorskip("gcsfs")
    from cloudckpt.storage.backends.gcs import _single_try

    cls = gcsfs.GCSFileSystem
    assert getattr(cls._request, "__wrapped__", None) is not None, \
        f"gcsfs {gcsfs.__version__}: _request is no longer decorated by retry_request"
    single = _single_try(cls)
    assert single is not cls and issubclass(single, cls)
    assert single._request is not cls._request

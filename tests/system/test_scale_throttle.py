"""16 ranks save at once against S3 (moto) behind a proxy that answers 503 SlowDown above a
request rate: every save commits, and the process-shared AIMD pacing keeps the request rate
near the limit instead of retrying into it (see docs/scale.md)."""

from __future__ import annotations

import json

import cloudckpt
from cloudckpt.engine.verify import verify
from cloudckpt.testing.emulators import free_port
from cloudckpt.testing.throttle_proxy import ThrottlingProxy
from tests.conftest import bucket_name, make_bucket
from tests.system import scale_worker

WORLD = 16
RATE = 40.0  # requests/s the "bucket" serves
SPAN = 3.0  # seconds of contention measured


def test_16_ranks_save_through_slowdown_and_pace_near_the_limit(emus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket = bucket_name("s3")
    opts = make_bucket(emus, "s3", bucket)
    uri = f"s3://{bucket}/run/step-000000000001"
    with ThrottlingProxy(emus.endpoint("s3"), rate=RATE, burst=8) as proxy:
        popts = {**opts, "endpoint_url": proxy.endpoint}
        out = tmp_path / "out"
        out.mkdir()
        scale_worker.start_ranks(scale_worker.throttle_job,
                                 (WORLD, free_port(), uri, json.dumps(popts), str(out)), WORLD)
        reports = [json.loads((out / f"rank{r}.txt").read_text()) for r in range(WORLD)]
        admitted, throttled = list(proxy.admitted_at), list(proxy.throttled_at)
    assert [r["result"] for r in reports] == ["saved"] * WORLD, reports
    m = cloudckpt.inspect(uri, storage_options=opts)
    assert len(m.tensors) == WORLD * scale_worker.TENSORS_PER_RANK
    assert verify(uri, storage_options=opts).ok
    # the proxy throttled, and the ranks' limiters heard every answer and slowed down
    assert throttled and sum(r["throttles"] for r in reports) == len(throttled)
    assert sum(r["decreases"] for r in reports) > 0 and sum(r["waited"] for r in reports) > 0
    # once the limiters engaged (a second after the burst of throttling that starts the
    # contention: its median answer), the ranks send near the limit: few requests are
    # throttled, and most slots of the limit are used
    t0 = throttled[len(throttled) // 2]
    hist = {k: (sum(1 for t in admitted if int(t - t0) == k),
                sum(1 for t in throttled if int(t - t0) == k)) for k in range(-2, 8)}
    print("per second from the median throttle (admitted, throttled):", hist)
    served = sum(1 for t in admitted if t0 + 1 <= t < t0 + 1 + SPAN)
    refused = sum(1 for t in throttled if t0 + 1 <= t < t0 + 1 + SPAN)
    print(f"admitted {len(admitted)}, throttled {len(throttled)}; after the first second of "
          f"contention: {served / SPAN:.1f}/s served (limit {RATE:g}/s), {refused} throttled")
    assert served >= 0.6 * RATE * SPAN, served
    assert refused <= 0.5 * served, (refused, served)

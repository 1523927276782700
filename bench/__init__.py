"""cloudckpt's benchmarks: one small script per scenario, shared helpers in ``bench/lib/``.

Run a scenario as a module from the repository root (``bench`` is a package, so each script
imports ``bench.lib``)::

    .venv/bin/python -m bench.save_load_local --quick
    .venv/bin/python -m bench.<scenario> --help

Scenarios: ``save_load_local``, ``save_load_s3``, ``save_load_rss``, ``ratios``,
``async_stall``, ``async_soak``, ``async_contention``, ``dist``, ``profile_phases``,
``cli_startup``. Every one
takes ``--quick`` (smallest sizes, one repeat: checks that it runs; its figures mean
nothing), ``--workdir`` and ``--out``. Method and figures: ``docs/benchmarks.md``.
"""

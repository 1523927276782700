"""The transformers gate of the Hugging Face integration (``hf._trainer_hooks``): versions outside
the supported range and missing or changed private ``Trainer`` methods fail loudly, at import and
at construction; the installed transformers passes; the package keeps its public names.

No emulator and no training: these only import transformers. Skipped without it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest

pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("accelerate", reason="accelerate (needed by transformers.Trainer) is not "
                    "installed")

from transformers import Trainer

from cloudckpt.errors import CloudckptError
from cloudckpt.integrations.hf import _trainer_hooks as hooks

RANGE = ">=5.24,<6"


def _fake_version(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """Make the running ``transformers`` report ``version`` (the module ``sys.modules`` holds
    now: transformers swaps its lazy module in after the first attribute import)."""
    monkeypatch.setattr(importlib.import_module("transformers"), "__version__", version)


def _fake_trainer(**replace: Any) -> type:
    """A class with the real ``Trainer``'s overridden methods, some replaced (``None``: absent)."""
    methods = {name: getattr(Trainer, name) for name in hooks.OVERRIDDEN}
    methods.update(replace)
    return type("FakeTrainer", (), {k: v for k, v in methods.items() if v is not None})


# -- the version range --------------------------------------------------------------------

def test_the_range_is_the_one_pyproject_declares() -> None:
    assert hooks.SUPPORTED_TRANSFORMERS == RANGE


def test_installed_transformers_passes() -> None:
    hooks.check_version(importlib.import_module("transformers").__version__)
    hooks.check_hooks(Trainer)
    hooks.check_transformers()


@pytest.mark.parametrize("version", ["5.24.0", "5.24.1", "5.99.0", "5.30.0.dev0"])
def test_versions_inside_the_range_pass(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, version)
    hooks.check_transformers()


@pytest.mark.parametrize("version", ["4.57.1", "5.23.9", "5.24.0.dev0", "6.0.0.dev0", "6.0.0",
                                     "7.1", "not-a-version"])
def test_versions_outside_the_range_raise(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, version)
    with pytest.raises(hooks.UnsupportedTransformers) as e:
        hooks.check_transformers()
    assert isinstance(e.value, ImportError) and isinstance(e.value, CloudckptError)
    msg = str(e.value)
    assert f"transformers{RANGE}" in msg and f"found transformers {version}" in msg
    assert "_save_checkpoint" in msg  # says why: the private methods it overrides


def test_import_outside_the_range_fails_but_the_callback_still_imports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, "6.0.0")
    # import the gated modules afresh; monkeypatch puts the originals back afterwards
    for name in ("cloudckpt.integrations.hf._trainer_hooks", "cloudckpt.integrations.hf.trainer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError, match=r"supports transformers>=5\.24,<6, found .* 6\.0\.0") \
            as e:
        importlib.import_module("cloudckpt.integrations.hf._trainer_hooks")
    assert isinstance(e.value, CloudckptError)
    with pytest.raises(ImportError, match=r">=5\.24,<6"):
        from cloudckpt.integrations.hf import CloudckptTrainer  # noqa: F401
    with pytest.raises(ImportError, match=r">=5\.24,<6"):
        from cloudckpt.integrations import CloudckptTrainer as _  # noqa: F401
    from cloudckpt.integrations.hf import CloudckptCallback  # public hooks only: not gated

    assert CloudckptCallback.__name__ == "CloudckptCallback"


# -- the private methods ------------------------------------------------------------------

def test_expected_signatures_are_those_of_the_installed_trainer() -> None:
    for name, expected in hooks.OVERRIDDEN.items():
        assert hooks.signature_shape(getattr(Trainer, name)) == expected, name


@pytest.mark.parametrize("missing", sorted(hooks.OVERRIDDEN))
def test_a_missing_private_method_is_detected(missing: str) -> None:
    with pytest.raises(hooks.UnsupportedTransformers,
                       match=rf"FakeTrainer\.{missing} is missing.*>=5\.24,<6"):
        hooks.check_hooks(_fake_trainer(**{missing: None}))


def test_a_changed_signature_is_detected() -> None:
    def old_save(self: Any, model: Any, trial: Any, metrics: Any = None) -> None:  # 4.x
        """transformers 4.x's ``_save_checkpoint``."""

    def renamed(self: Any, ckpt: str | None) -> None:
        """A renamed parameter."""

    with pytest.raises(hooks.UnsupportedTransformers) as e:
        hooks.check_hooks(_fake_trainer(_save_checkpoint=old_save, _load_scaler=renamed,
                                        _load_rng_state="not a method"), version="9.9")
    msg = str(e.value)
    assert "transformers 9.9" in msg
    assert "_save_checkpoint(self, model, trial, metrics=None) differs from the expected " \
           "_save_checkpoint(self, model, trial)" in msg
    assert "_load_scaler(self, ckpt)" in msg and "_load_rng_state is not a method" in msg
    assert "_load_from_checkpoint" not in msg  # unchanged ones are not reported


def test_annotations_do_not_matter() -> None:
    def annotated(self: Any, checkpoint: str | int | None) -> int:
        return 0

    hooks.check_hooks(_fake_trainer(_load_scaler=annotated))


def test_a_private_method_removed_after_import_fails_at_check_and_construction(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from cloudckpt.integrations.hf import CloudckptTrainer

    monkeypatch.delattr(Trainer, "_load_rng_state")
    with pytest.raises(hooks.UnsupportedTransformers, match=r"Trainer\._load_rng_state is missing"):
        hooks.check_transformers()
    with pytest.raises(hooks.UnsupportedTransformers, match=r"Trainer\._load_rng_state is missing"):
        CloudckptTrainer(checkpoint_uri=str(tmp_path))


def test_a_renamed_state_file_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer_module = importlib.import_module(Trainer.__module__)
    monkeypatch.setattr(trainer_module, "TRAINER_STATE_NAME", "state.json")
    with pytest.raises(hooks.UnsupportedTransformers,
                       match=r"reads its state from 'state\.json', not 'trainer_state\.json'"):
        hooks.check_transformers()
    monkeypatch.delattr(trainer_module, "TRAINER_STATE_NAME")
    with pytest.raises(hooks.UnsupportedTransformers, match=r"from None.*>=5\.24,<6"):
        hooks.check_state_file(trainer_module)


# -- the package surface ------------------------------------------------------------------

def test_the_package_exports_the_same_public_names() -> None:
    import cloudckpt.integrations.hf as hf

    names = {"STATE_KEY", "CONFIG_KEY", "CloudckptCallback", "CloudckptTrainer", "HFRotation",
             "trainer_state_from_dict", "trainer_state_to_dict", "export_pretrained",
             "download_checkpoint", "HFCheckpointDir"}
    assert set(hf.__all__) == names
    for name in names:
        assert getattr(hf, name) is not None, name
    assert issubclass(hf.CloudckptTrainer, Trainer)
    assert issubclass(hf.CloudckptTrainer, hooks.TrainerHooks)
    assert hf.STATE_KEY == "hf_trainer_state"
    with pytest.raises(AttributeError):
        _ = hf.NoSuchName


# -- the supported range's ends, against recorded signatures ------------------------------

#: What the overridden ``Trainer`` methods look like in each release at an end of the
#: supported range, recorded from that release's ``transformers/trainer.py``. 5.24.0 is the
#: lower bound and, when recorded, also the newest release on PyPI: both ends of the range are
#: this one release, which the dev environment installs (so every HF test runs against it).
#: When a newer 5.x ships, record its signatures here and run the HF tests against it.
RECORDED: dict[str, dict[str, str]] = {
    "5.24.0": {
        "_save_checkpoint": "(self, model, trial)",
        "_load_from_checkpoint": "(self, resume_from_checkpoint, model=None)",
        "_load_optimizer_and_scheduler": "(self, checkpoint)",
        "_load_scaler": "(self, checkpoint)",
        "_load_rng_state": "(self, checkpoint)",
        "_load_best_model": "(self)",
        "train": "(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None)",
    },
}


def _recorded_trainer(version: str) -> type:
    """A class whose methods have exactly the signatures recorded for ``version``."""
    ns: dict[str, Any] = {}
    for name, sig in RECORDED[version].items():
        exec(f"def {name}{sig}:\n    return None\n", ns)  # a def with that parameter list
    return type(f"Trainer_{version}", (), {n: ns[n] for n in RECORDED[version]})


def test_the_recorded_versions_are_the_ends_of_the_range() -> None:
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(RANGE)
    lowest = min(RECORDED, key=lambda v: tuple(int(x) for x in v.split(".")))
    assert lowest == next(s.version for s in spec if s.operator == ">=") + ".0"
    assert all(spec.contains(v) for v in RECORDED)


@pytest.mark.parametrize("version", sorted(RECORDED))
def test_the_gate_accepts_each_recorded_end_of_the_range(version: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, version)
    hooks.check_version(version)
    hooks.check_hooks(_recorded_trainer(version), version=version)
    assert set(RECORDED[version]) == set(hooks.OVERRIDDEN)


def test_the_recording_matches_the_installed_release_when_it_is_one_of_them() -> None:
    installed = importlib.import_module("transformers").__version__
    if installed not in RECORDED:
        pytest.skip(f"transformers {installed} has no recorded signatures")
    for name, sig in RECORDED[installed].items():
        assert hooks.signature_shape(getattr(Trainer, name)) == sig, name


def test_the_gate_refuses_a_recorded_release_with_one_change() -> None:
    changed = _recorded_trainer("5.24.0")

    def _load_best_model(self: Any, strict: bool = True) -> None:
        """A parameter added."""

    changed._load_best_model = _load_best_model  # type: ignore[attr-defined]
    with pytest.raises(hooks.UnsupportedTransformers, match=r"_load_best_model\(self, strict=True\)"):
        hooks.check_hooks(changed, version="5.25.0")

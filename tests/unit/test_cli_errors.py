"""The CLI as users meet it, in-process on local directories (issue 13, items 8-10): a typo or
a wrong prefix is not "no checkpoints", errors are one line with the documented exit status,
global options go after the command too, secrets never appear, every command explains itself,
deleting is a dry run unless confirmed, archive/rehydrate say what they did, import reads our
own export, and ls/show/verify start without torch."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import cloudckpt
from cloudckpt import CheckpointManager
from cloudckpt.cli import _parser, main
from cloudckpt.cli.session import scrub, secrets_of
from cloudckpt.format.keys import step_dir
from cloudckpt.manager.index import META_KEY
from tests.helpers import assert_same

SECRET = "FAKE-s3cr3t-0123456789abcdef"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudckpt: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))


@pytest.fixture
def run(tmp_path: Path) -> str:
    uri = str(tmp_path / "runs" / "exp1")
    mgr = CheckpointManager(uri, keep_last=None, metric="loss")
    for step, loss in ((10, 0.5), (20, 0.3)):
        mgr.save(step, model=_model(step), metrics={"loss": loss, "acc": 1 - loss})
    return uri


# -- item 8: missing is exit 3 with one line; an existing location says what it holds ---------
@pytest.mark.parametrize("command", ["ls", "verify", "show", "export"])
def test_missing_local_path_is_exit_3_one_line(command: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    extra = [str(tmp_path / "out.safetensors")] if command == "export" else []
    code, out, err = run_cli(capsys, command, str(tmp_path / "no-such-run"), *extra)
    assert code == 3 and out == ""
    assert "nothing at" in one_error_line(err) and "no such file or directory" in err


def test_scheme_typo_is_not_an_empty_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "ls", "s3//bkt/run")
    assert code == 3 and out == ""
    assert "did you mean s3://bkt/run?" in one_error_line(err)
    code, _, err = run_cli(capsys, "ls", "s3:/bkt/run")  # no "//": a malformed URI
    assert code == 2 and "malformed store URI" in one_error_line(err)


def test_existing_location_without_checkpoints_says_so(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli(capsys, "ls", str(empty))
    assert code == 0 and err == "" and "no checkpoints under" in out and "it is empty" in out
    code, out, err = run_cli(capsys, "ls", str(empty), "--json")
    assert code == 0 and json.loads(out) == [] and "no checkpoints under" in err
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "notes.txt").write_text("x")
    code, out, _ = run_cli(capsys, "ls", str(other))
    assert code == 0 and "1 object(s), none of them a checkpoint or a run" in out
    for command in ("verify", "show"):  # nothing to act on: not found
        code, out, err = run_cli(capsys, command, str(other))
        assert code == 3 and out == "" and "no checkpoints under" in one_error_line(err)
    a_file = tmp_path / "weights.pt"
    a_file.write_bytes(b"not a checkpoint")
    for command in ("ls", "verify", "show", "rm"):
        code, out, err = run_cli(capsys, command, str(a_file))
        assert code == 3 and out == "" and "it is a file" in one_error_line(err)


def test_verify_of_a_missing_path_says_so(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "gone"), "--step", "3")
    assert code == 3 and out == "" and "nothing at" in one_error_line(err)


# -- item 9: ls of a parent prefix, chosen metrics, added/shared bytes -----------------------
def test_ls_of_a_parent_prefix_lists_its_runs(run: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    CheckpointManager(str(tmp_path / "runs" / "exp2"), keep_last=None).save(
        5, model=_model(5))
    cloudckpt.save({"w": torch.ones(3)}, str(tmp_path / "runs" / "loose" / "ckpt"),
                   metadata={META_KEY: {"step": 7, "epoch": 1, "metrics": {}}})
    code, out, _ = run_cli(capsys, "ls", str(tmp_path / "runs"), "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"exp1", "exp2", "loose/ckpt"}
    assert (rows["exp1"]["kind"], rows["exp1"]["checkpoints"], rows["exp1"]["step"]) == (
        "run", 2, 20)
    assert rows["exp1"]["metrics"] == {"loss": 0.3, "acc": pytest.approx(0.7)}
    assert (rows["exp2"]["checkpoints"], rows["exp2"]["step"]) == (1, 5)
    assert (rows["loose/ckpt"]["kind"], rows["loose/ckpt"]["step"],
            rows["loose/ckpt"]["epoch"]) == ("checkpoint", 7, 1)
    code, out, _ = run_cli(capsys, "ls", str(tmp_path / "runs"))
    assert code == 0 and "exp1" in out and "exp2" in out and "KIND" in out
    code, _, err = run_cli(capsys, "show", str(tmp_path / "runs"))
    assert code == 3 and "2 run(s) and 1 checkpoint(s)" in one_error_line(err)


def test_ls_metrics_can_be_chosen(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "ls", run, "--metrics", "loss", "--json")
    assert code == 0 and [r["metrics"] for r in json.loads(out)] == [{"loss": 0.5},
                                                                      {"loss": 0.3}]
    code, out, _ = run_cli(capsys, "ls", run, "--metrics", "acc,missing")
    header = out.splitlines()[0].split()
    assert code == 0 and "ACC" in header and "MISSING" in header and "METRICS" not in header
    assert "loss=" not in out
    code, out, _ = run_cli(capsys, "ls", run)
    assert "loss=0.5 acc=0.5" in out and "METRICS" in out.splitlines()[0]


def test_ls_shows_added_and_shared_bytes(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "inc")
    mgr = CheckpointManager(uri, keep_last=None)
    model = _model(1)
    mgr.save(1, model=model)
    with torch.no_grad():
        model[1].bias.add_(1.0)  # one small tensor changes, the rest is shared
    mgr.save(2, model=model)
    code, out, _ = run_cli(capsys, "ls", uri, "--json")
    rows = {r["step"]: r for r in json.loads(out)}
    for step in (1, 2):
        m = cloudckpt.inspect(f"{uri}/{step_dir(step)}")
        assert (rows[step]["added_bytes"], rows[step]["shared_bytes"]) == (
            m.added_bytes, m.shared_bytes)
    assert rows[1]["shared_bytes"] == 0 and rows[2]["shared_bytes"] > 0
    assert rows[2]["added_bytes"] < rows[1]["added_bytes"]
    code, out, _ = run_cli(capsys, "ls", f"{uri}/{step_dir(2)}", "--json")  # one checkpoint
    (one,) = json.loads(out)
    assert (one["added_bytes"], one["shared_bytes"]) == (rows[2]["added_bytes"],
                                                         rows[2]["shared_bytes"])
    code, out, _ = run_cli(capsys, "ls", uri)
    header = out.splitlines()[0].split()
    assert code == 0 and header[header.index("STORED") + 1:][:2] == ["ADDED", "SHARED"]


# -- item 9: global options after the command; secrets never echoed -------------------------
def test_storage_options_before_or_after_the_command() -> None:
    p = _parser()
    opts = '{"endpoint_url": "http://127.0.0.1:1"}'
    assert p.parse_args(["ls", "x", "-o", opts]).storage_options == json.loads(opts)
    assert p.parse_args(["ls", "x", "--storage-options", opts]).storage_options == json.loads(opts)
    assert p.parse_args(["-o", opts, "ls", "x"]).storage_options == json.loads(opts)
    assert p.parse_args(["ls", "x"]).storage_options is None
    assert p.parse_args(["ls", "x", "--debug"]).debug and p.parse_args(["--debug", "ls", "x"]).debug
    for name in _commands(p):
        if name != "demo":
            assert p.parse_args([name, *_positionals(p, name), "-o", "{}"]).storage_options == {}


def test_options_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "opts.json"
    f.write_text(json.dumps({"key": "k", "secret": SECRET}))
    assert _parser().parse_args(["ls", "x", "-o", f"@{f}"]).storage_options["secret"] == SECRET


@pytest.mark.parametrize("bad", [f'{{"secret": "{SECRET}"', f'["{SECRET}"]'])
def test_malformed_options_never_echo_the_value(bad: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["ls", "x", "-o", bad])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and SECRET not in out + err and "storage-options" in err


def test_secrets_are_collected_and_scrubbed() -> None:
    ns = argparse.Namespace(storage_options={
        "key": "AKIAFAKEKEYID", "secret": SECRET, "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"region_name": "us-east-1"}, "anon": False},
        dst_storage_options={"connection_string": "DefaultEndpointsProtocol=http;AccountName="
                                                  "devstore;AccountKey=QUtleTEyMzQ1Njc4OQ==;"},
        b_storage_options=None)
    secrets = secrets_of(ns)
    assert {"AKIAFAKEKEYID", SECRET, "QUtleTEyMzQ1Njc4OQ=="} <= secrets
    assert "http://127.0.0.1:9000" not in secrets and "us-east-1" not in secrets
    text = f"failed with key QUtleTEyMzQ1Njc4OQ== and {SECRET} at http://127.0.0.1:9000"
    assert scrub(text, secrets) == "failed with key *** and *** at http://127.0.0.1:9000"


def test_a_secret_in_an_error_is_scrubbed(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # the error line names the path, which here contains the value of a storage option
    code, out, err = run_cli(capsys, "ls", str(tmp_path / SECRET),
                             "-o", json.dumps({"token": SECRET}))
    assert code == 3 and SECRET not in out + err and "nothing at" in one_error_line(err)
    assert "***" in err


# -- item 9: one line for every error; help everywhere ---------------------------------------
def test_unexpected_exceptions_are_one_line(run: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from cloudckpt.cli import inspect_cmds

    def boom(*_a: Any, **_k: Any) -> Any:
        raise KeyError("objects")

    monkeypatch.setattr(inspect_cmds, "rows_for", boom)
    code, _, err = run_cli(capsys, "ls", run)
    assert code == 70 and "KeyError: 'objects'" in one_error_line(err) and "--debug" in err
    with pytest.raises(KeyError):
        main(["ls", run, "--debug"])


@pytest.mark.parametrize("argv", [["ls"], ["bogus"], [], ["rm", "x", "--step", "ten"],
                                  ["ls", "x", "--metrics", ","]])
def test_usage_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and "--help" in lines[0], err


def _commands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _positionals(p: argparse.ArgumentParser, name: str) -> list[str]:
    """A minimal valid argument list for command ``name``: its positionals and required
    options (one of each required group), each given "1"."""
    cmd = _commands(p)[name]
    argv = ["1" for a in cmd._actions if not a.option_strings and a.nargs is None]
    required = [a for a in cmd._actions if a.option_strings and a.required]
    required += [g._group_actions[0] for g in cmd._mutually_exclusive_groups if g.required]
    for a in required:
        argv += [a.option_strings[-1], "1"]
    return argv


def test_every_argument_has_help_and_every_command_examples() -> None:
    p = _parser()
    commands = _commands(p)
    assert {"ls", "show", "verify", "rm", "archive", "rehydrate", "import", "export"} <= set(
        commands)
    for name, cmd in [("cloudckpt", p), *commands.items()]:
        for action in cmd._actions:
            assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
        assert cmd.epilog and "example" in cmd.epilog, f"{name}: no examples in --help"
        if name != "demo":
            assert f"cloudckpt {name}" in cmd.epilog or name == "cloudckpt", name


def test_help_output_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["rehydrate", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and "cloudckpt rehydrate s3://" in out


def test_demo_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out
    options = out.split("options:")[1].split("examples:")[0]
    for flag in ("--uri", "--steps", "--save-every", "--kill-at", "--storage-options"):
        entry = options.split(flag, 1)[1].split("\n  --", 1)[0]
        assert len(entry.replace(flag.upper().lstrip("-").replace("-", "_"), "").split()) > 1, \
            f"{flag} has no help"


# -- item 9: rm is a dry run unless --yes; archive says when there is nothing to do ----------
def test_rm_is_a_dry_run_unless_confirmed(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "rm", run, "--step", "10")
    assert code == 0 and "would delete step 10" in out and "--yes" in out
    assert CheckpointManager(run, keep_last=None).steps() == [10, 20]
    step_uri = f"{run}/{step_dir(20)}"
    code, out, _ = run_cli(capsys, "rm", step_uri)
    assert code == 0 and "would delete step 20" in out
    assert CheckpointManager(run, keep_last=None).steps() == [10, 20]
    code, out, _ = run_cli(capsys, "rm", step_uri, "--yes")  # through the run: its records too
    assert code == 0 and "deleted step 20" in out
    assert CheckpointManager(run, keep_last=None).steps() == [10]
    code, _, err = run_cli(capsys, "rm", run, "--step", "99", "--yes")
    assert code == 3 and "step(s) 99" in one_error_line(err)
    assert CheckpointManager(run, keep_last=None).steps() == [10]


def test_rm_of_a_shared_step_keeps_what_others_read(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "inc")
    mgr = CheckpointManager(uri, keep_last=None)
    model = _model(3)
    mgr.save(1, model=model)
    mgr.save(2, model=model)  # all of it shared with step 1
    assert cloudckpt.inspect(f"{uri}/{step_dir(2)}").shared_bytes > 0
    code, _, _ = run_cli(capsys, "rm", f"{uri}/{step_dir(1)}", "--yes")
    assert code == 0 and CheckpointManager(uri, keep_last=None).steps() == [2]
    fresh = _model(4)
    CheckpointManager(uri, keep_last=None).restore(model=fresh)
    assert_same(dict(model.state_dict()), dict(fresh.state_dict()))
    assert run_cli(capsys, "verify", uri)[0] == 0


def test_archive_twice_and_rehydrate_from_an_archive_uri(
        run: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = str(tmp_path / "cold")
    before = cloudckpt.load(f"{run}/{step_dir(10)}")
    code, out, err = run_cli(capsys, "archive", run, "--step", "10", "--to", archive)
    assert code == 0 and "archived step 10" in out, err
    code, out, err = run_cli(capsys, "archive", run, "--step", "10", "--to", archive)
    assert code == 0 and err == "" and "already archived" in out
    code, out, err = run_cli(capsys, "archive", run, "--step", "10", "--to", str(tmp_path / "x"))
    assert code == 6 and out == "" and "rehydrate" in one_error_line(err)
    code, out, err = run_cli(capsys, "rehydrate", run, "--step", "10")
    assert code == 0 and "copied back" in out, err
    recs = {r.step: r for r in CheckpointManager(run, keep_last=None).checkpoints()}
    assert recs[10].location == "hot"
    assert not Path(run, "archived", f"{step_dir(10)}.json").exists()
    assert_same(before, cloudckpt.load(f"{run}/{step_dir(10)}"))
    assert Path(archive, step_dir(10), "manifest.json").exists()  # the archive copy stays
    code, out, _ = run_cli(capsys, "rehydrate", run, "--step", "10")
    assert code == 0 and "not archived" in out
    code, _, err = run_cli(capsys, "rehydrate", run, "--step", "11")
    assert code == 3 and "step 11" in one_error_line(err)


# -- item 9: import reads our own export back --------------------------------------------------
def test_import_of_our_own_export_round_trips(run: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    original = cloudckpt.load(f"{run}/{step_dir(20)}")
    full = tmp_path / "full.pt"
    assert run_cli(capsys, "export", run, str(full))[0] == 0
    code, _, err = run_cli(capsys, "import", str(full), str(tmp_path / "back"))
    assert code == 0, err
    assert_same(original, cloudckpt.load(str(tmp_path / "back")))
    weights = tmp_path / "w.safetensors"
    assert run_cli(capsys, "export", run, str(weights), "--inference")[0] == 0
    assert run_cli(capsys, "import", str(weights), str(tmp_path / "w"))[0] == 0
    model = dict(original["objects"]["model"])  # safetensors keeps names sorted
    assert_same(dict(sorted(model.items())), dict(sorted(cloudckpt.load(tmp_path / "w").items())))


def test_import_of_an_unusable_file_is_one_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    hostile = tmp_path / "hostile.pt"
    torch.save({"w": torch.ones(2), "obj": argparse.Namespace(a=1)}, hostile)
    code, _, err = run_cli(capsys, "import", str(hostile), str(tmp_path / "h"))
    assert code == 2 and "UnpicklingError" in one_error_line(err)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code, _, err = run_cli(capsys, "import", str(broken), str(tmp_path / "b"))
    assert code == 2 and "cannot be imported" in one_error_line(err)
    assert not (tmp_path / "h").exists() and not (tmp_path / "b").exists()


# -- item 10: ls/show/verify without torch ----------------------------------------------------
@pytest.mark.parametrize("argv", [["ls", "{run}"], ["ls", "{run}", "--json"],
                                  ["show", "{run}"], ["verify", "{run}"], ["ls", "{parent}"]])
def test_ls_show_verify_do_not_import_torch(argv: list[str], run: str) -> None:
    args = [a.format(run=run, parent=str(Path(run).parent)) for a in argv]
    code = ("import sys, cloudckpt.cli as c; rc = c.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "import cloudckpt; assert 'torch' not in sys.modules; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_the_package_root_is_lazy_and_complete() -> None:
    code = ("import sys, cloudckpt; assert 'torch' not in sys.modules, 'torch at import'; "
            "assert cloudckpt.storage.register_backend and cloudckpt.manager.RunContext; "
            "missing = [n for n in cloudckpt.__all__ if not hasattr(cloudckpt, n)]; "
            "assert not missing, missing; "
            "assert cloudckpt.CheckpointManager is cloudckpt.manager.CheckpointManager; "
            "assert set(cloudckpt.__all__) <= set(dir(cloudckpt))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


"""The typed manifest (tavcli/app/manifest.py): schema 2, the migration from schema 1, validation of what is
stored and of what is imported, and a store written by an earlier tav still listing, showing, editing and
exporting.

The schema-1 fixture (tests/fixtures/schema1) is a real store written by tav at ca5d0e9, before the typed
manifest: one artifact tuned on the tests' tiny random base (seed 0) for 2 steps, 2 frames of 64x64, with one
recorded edit; `edit-png/` holds the frames that tav rendered for `tav edit slide "a blue square" --steps 2
--format png` then, so an edit today can be compared with it bit for bit.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from tavcli.app.manifest import SCHEMA, EditRecord, Manifest, ManifestError, migrate, open_store
from tavcli.app.store import _content_id
from tavcli.faces.cli import _list_table
from tests.test_cli import (
    SCHEMA1,
    _zip,
    assert_error,
    png_folder_frames,
    private_home,
    schema1_manifest,
    store_state,
    tmp_leftovers,
)
from tests.test_cli import cli  # noqa: F401 (a fixture)

FIXTURE_ID = "2e3c47eacab8fc972ec0c6ebb2f07d704435805d5cb700cd6c677f6075c56117"


@pytest.fixture
def old_home(tmp_path, monkeypatch) -> Path:
    """A copy of the schema-1 store, as $TAV_HOME."""
    return private_home(SCHEMA1, tmp_path / "old-home", monkeypatch)  # its edit-png/ beside artifacts/ is harmless


def _raw_fixture_manifest() -> dict:
    return json.loads((SCHEMA1 / "artifacts" / FIXTURE_ID / "manifest.json").read_text())


# --- records, schema and migration ---------------------------------------------------------------------------


def test_the_migration_from_schema_1_splits_tuning_into_settings_run_and_provenance():
    raw = _raw_fixture_manifest()
    assert raw["schema"] == 1 and "norm" not in raw["adapter"] and "cuda_graphs" in raw["tuning"]
    migrated = migrate(raw)
    assert migrated["schema"] == SCHEMA == 2
    assert migrated["tuning"] == {"betas": [0.9, 0.999], "lr": 3e-05, "max_grad_norm": 1.0, "seed": 0, "steps": 2,
                                  "weight_decay": 0.01}
    assert migrated["run"] == {"compile": False, "device": "cpu", "dtype": "float32", "seconds": 2.52}
    assert migrated["provenance"] == {"origin": "tuned"}
    assert migrated["adapter"] == {"attention": "sparse-causal", "kind": "full", "norm": "clip", "rank": 16,
                                   "temporal_seed": 0}
    assert raw == _raw_fixture_manifest()  # in memory only: the stored bytes, hence the id, never change


def test_an_official_import_of_schema_1_keeps_where_it_came_from():
    raw = _raw_fixture_manifest()
    raw["tuning"] = {"steps": 500, "lr": 3e-5, "seed": 33, "device": "official", "dtype": "float16", "seconds": None,
                     "imported_from": "/runs/man-skiing", "weights_sha256": "ab" * 32}
    m = Manifest.from_json(raw)
    assert (m.tuning.steps, m.tuning.seed, m.tuning.betas) == (500, 33, None)
    assert (m.run.device, m.run.dtype, m.run.seconds) == ("official", "float16", None)
    assert (m.provenance.origin, m.provenance.folder, m.provenance.weights_sha256) == ("official", "/runs/man-skiing",
                                                                                       "ab" * 32)


def test_a_manifest_round_trips_through_json():
    m = Manifest.from_json(_raw_fixture_manifest())
    again = Manifest.from_json(m.to_json() | {"files": m.files})
    assert again == m and again.to_json() == m.to_json()
    content = m.to_json()
    assert content["schema"] == SCHEMA and not {"files", "id", "created"} & content.keys()
    assert content["base"] == {"name": "/tmp/fx/tiny-sd", "revision": None,
                               "fingerprint": "d681effb3e48c0f5eb9b4f6474e5695d8b2617a39ea63ba4e528bfc85cb51f72"}
    assert (m.source.indices, m.video.frames, m.loss) == ((0, 5), 2, (1.239504, 0.950868))
    assert m.has_inversion and m.has_file("source.mp4") and m.id == FIXTURE_ID


def test_checkpoints_and_previews_are_records():
    content = Manifest.from_json(_raw_fixture_manifest()).to_json()
    content |= {"checkpoints": [{"step": 10, "folder": "checkpoints/step-000010"}],
                "previews": [{"step": 10, "prompt": "a panda", "file": "previews/step-000010-a-panda.mp4"}]}
    m = Manifest.from_json(content)
    assert (m.checkpoints[0].step, m.checkpoints[0].folder, m.previews[0].prompt) == (
        10, "checkpoints/step-000010", "a panda")
    assert m.to_json() == content
    with pytest.raises(ManifestError, match=r"manifest.checkpoints\[0\].step should be a number"):
        Manifest.from_json(content | {"checkpoints": [{"step": "ten", "folder": "x"}]})
    with pytest.raises(ManifestError, match=r"manifest.previews\[0\] lacks 'file'"):
        Manifest.from_json(content | {"previews": [{"step": 1, "prompt": "x"}]})


def _broken(change) -> dict:
    raw = copy.deepcopy(_raw_fixture_manifest())
    change(raw)
    return raw


@pytest.mark.parametrize("change, words", [
    (lambda m: m.pop("video"), ("manifest lacks 'video'",)),
    (lambda m: m["video"].pop("width"), ("manifest.video lacks 'width'",)),
    (lambda m: m["adapter"].update(rank=0), ("manifest.adapter.rank", "at least 1")),
    (lambda m: m["adapter"].update(attention="bogus"), ("manifest.adapter.attention", "'bogus'", "sparse-causal")),
    (lambda m: m["source"].update(indices=["x"]), ("manifest.source.indices", "integer")),
    (lambda m: m["video"].update(frames="4"), ("manifest.video.frames", "number")),
    (lambda m: m.update(loss={"a": 1}), ("manifest.loss", "list")),
    (lambda m: m.update(prompt=None), ("manifest.prompt", "null")),
    (lambda m: m.update(schema=3), ("schema 3", "newer", "upgrade tav")),
    (lambda m: m.pop("schema"), ("no valid schema",)),
], ids=["no video", "no width", "rank 0", "unknown attention", "text index", "text frames", "loss object",
        "null prompt", "newer schema", "no schema"])
def test_a_manifest_that_does_not_fit_is_refused_naming_the_field(change, words):
    with pytest.raises(ManifestError) as e:
        Manifest.from_json(_broken(change))
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_edit_records_are_typed_and_old_ones_read():
    (line,) = (SCHEMA1 / "artifacts" / FIXTURE_ID / "edits.jsonl").read_text().splitlines()
    e = EditRecord.from_json(json.loads(line))  # schema 1's record had inversion_steps and cuda_graphs: ignored
    assert (e.prompt, e.steps, e.guidance, e.seed, e.frames, e.output) == (
        "a blue square", 2, 12.5, 0, 2, "/tmp/fx/out/slide-a-blue-square.mp4")
    with pytest.raises(ManifestError, match="lacks 'created'"):
        EditRecord.from_json({"prompt": "x", "steps": 2, "guidance": 1.0, "seed": 0})


# --- a schema-1 store with today's tav -------------------------------------------------------------------------


def test_a_schema_1_store_lists_and_shows(cli, old_home):
    r = cli("list", "--json")
    assert r.code == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["id"], row["name"], row["prompt"], row["frames"], row["edits"], row["damaged"]) == (
        FIXTURE_ID, "slide", "a red square slides right", 2, 1, None)
    r = cli("show", "slide", "--json")
    assert r.code == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["schema"] == 2 and shown["id"] == FIXTURE_ID and shown["adapter"]["norm"] == "clip"
    assert shown["run"]["device"] == "cpu" and shown["edits"][0]["prompt"] == "a blue square"
    r = cli("show", "slide")
    assert r.code == 0, r.stderr
    for words in ("2 frames, 64×64, 1.6 fps, crop", "full, sparse-causal attention, clip norm", "2 steps, lr 3e-05",
                  "run       cpu float32, 2.52 s", "inversion 50 steps", "'a blue square' -> /tmp/fx/out/"):
        assert words in r.stdout, (words, r.stdout)


def test_a_schema_1_artifact_edits_as_it_did(cli, old_home, tmp_path, tiny_base_dir):
    """Same base weights (by the fingerprint tav recorded then, found at another path), same frames as tav
    rendered at ca5d0e9 (with one thread, as then: another thread count sums in another order, which can move
    a pixel by one level)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _edit_again(cli, old_home, tmp_path, _as_saved_then(tiny_base_dir, tmp_path / "base-then"))
    finally:
        torch.set_num_threads(threads)


def _as_saved_then(base: Path, copy: Path) -> Path:
    """The tiny base as the fixture's transformers saved it: the same weights, its config stamped with that
    version, which the fingerprint recorded then (before 2026-12-04) included."""
    shutil.copytree(base, copy)
    config = copy / "text_encoder" / "config.json"
    now = json.loads(config.read_text())["transformers_version"]
    then = _raw_fixture_manifest()["versions"]["transformers"]
    config.write_text(config.read_text().replace(f'"transformers_version": "{now}"', f'"transformers_version": "{then}"'))
    return copy


def _edit_again(cli, old_home, tmp_path, tiny_base_dir):
    out = tmp_path / "again"
    r = cli("edit", "slide", "a blue square", "--steps", "2", "--format", "png", "-o", out, "--base", tiny_base_dir,
            "-q")
    assert (r.code, r.stderr) == (0, ""), r.stderr
    # the same frames, but for rounding: a library release since the fixture (transformers 5.24.0 then, 5.25.0
    # on 2026-12-04) moved 9 of its 24,576 values by one level; a wrong migration or base moves them all
    again, then = png_folder_frames(out).astype(int), png_folder_frames(SCHEMA1 / "edit-png").astype(int)
    assert again.shape == then.shape and np.abs(again - then).max() <= 1
    assert np.count_nonzero(again != then) <= again.size // 1000
    assert [e.prompt for e in _edits(old_home)] == ["a blue square", "a blue square"]


def _edits(home: Path) -> list[EditRecord]:
    from tavcli.app.manifest import edits_of

    (artifact,) = open_store(home).list()
    return edits_of(artifact)


def test_a_schema_1_artifact_exports_and_imports_with_its_id(cli, old_home, tmp_path, monkeypatch):
    r = cli("export", "slide", tmp_path / "slide.tav")
    assert r.code == 0, r.stderr
    r = cli("export", "slide", tmp_path / "peft", "--format", "peft")
    assert r.code == 0 and (tmp_path / "peft" / "adapter_model.safetensors").is_file(), r.stderr
    other = tmp_path / "other"
    monkeypatch.setenv("TAV_HOME", str(other))
    r = cli("import", tmp_path / "slide.tav")
    assert (r.code, r.stdout.strip()) == (0, FIXTURE_ID[:12]), r.stderr
    (edit,) = _edits(other)
    assert edit.prompt == "a blue square" and edit.output is None  # another machine's path is not ours to open


# --- damaged entries (issue #12, item 3) ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["not json", "missing", "unfit"])
def test_a_damaged_manifest_is_listed_refused_and_removable(cli, old_home, damage):
    path = old_home / "artifacts" / FIXTURE_ID / "manifest.json"
    if damage == "not json":
        path.write_text("{not json")
    elif damage == "missing":
        path.unlink()
    else:  # valid JSON, right id, but not a manifest of any schema
        raw = json.loads(path.read_text())
        del raw["video"]
        path.write_text(json.dumps(raw))
    r = cli("list", "--json")
    assert r.code == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["id"] == FIXTURE_ID and row["prompt"] is None and "tav rm 2e3c47eacab8" in row["damaged"]
    r = cli("list")
    assert r.code == 0 and "2e3c47eacab8" in r.stdout and "damaged" in r.stdout
    r = cli("store")
    assert r.code == 0 and "0 artifacts" in r.stdout and "1 damaged" in r.stdout
    for command in (("show", "2e3c47"), ("show", FIXTURE_ID), ("edit", "2e3c47", "a dog"), ("export", "2e3c", "x.tav")):
        assert_error(cli(*command), 1, "manifest.json", "tav rm 2e3c47eacab8")
    assert_error(cli("show", "slide"), 3, "no artifact matches 'slide'")  # its name is in the unreadable manifest
    r = cli("rm", "2e3c47")
    assert (r.code, r.stdout.strip()) == (0, "2e3c47eacab8"), r.stderr
    assert json.loads(cli("list", "--json").stdout) == [] and tmp_leftovers(old_home) == []


# --- imports that fit the hash but not the schema (issue #12, item 4) -----------------------------------------


def _archive(path: Path, manifest: dict, files: dict[str, bytes], edits: bytes | None = None) -> Path:
    """A .tav archive whose manifest's id is recomputed, as a forger would."""
    import hashlib

    manifest = dict(manifest)
    manifest["files"] = {rel: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                         for rel, data in files.items()}
    manifest.pop("id", None)
    manifest["id"] = _content_id(manifest)
    members = {"manifest.json": json.dumps(manifest).encode()} | {f"files/{k}": v for k, v in files.items()}
    return _zip(path, members | ({"edits.jsonl": edits} if edits is not None else {}))


def test_an_import_whose_manifest_lacks_a_field_is_refused(cli, old_home, tmp_path):
    raw = _raw_fixture_manifest()
    del raw["video"]
    archive = _archive(tmp_path / "forged.tav", raw | {"name": "forged", "created": "2024-01-01T00:00:00Z"},
                       {"a.txt": b"a"})
    before = store_state(old_home)
    assert_error(cli("import", archive), 2, "not a tav export", "lacks 'video'")
    assert store_state(old_home) == before and tmp_leftovers(old_home) == []


def test_an_imported_edit_log_keeps_only_records_that_fit_and_no_foreign_paths(cli, old_home, tmp_path, monkeypatch):
    good = {"prompt": "a dog", "created": "2024-01-01T00:00:00+00:00", "steps": 2, "guidance": 12.5, "seed": 0,
            "output": "/etc/shadow"}
    log = b"\n".join([json.dumps(good).encode(), b"not json", b"[1, 2]", json.dumps({"prompt": "no rest"}).encode()])
    archive = _archive(tmp_path / "odd.tav", schema1_manifest() | {"name": "odd", "created": "2024-01-01T00:00:00Z",
                                                                     "schema": 1}, {"a.txt": b"a"}, log)
    r = cli("import", archive)
    assert r.code == 0, r.stderr
    (artifact,) = [a for a in open_store(old_home).list() if a.name == "odd"]
    assert [json.loads(line) for line in (artifact.path / "edits.jsonl").read_text().splitlines()] == [
        good | {"output": None}]
    r = cli("show", "odd")
    assert r.code == 0 and "'a dog' -> (imported; not on this machine)" in r.stdout, r.stderr
    r = cli("list", "--json")
    assert r.code == 0 and {row["name"] for row in json.loads(r.stdout)} == {"slide", "odd"}
    assert_error(cli("score", "odd"), 2, "no edit videos on disk")  # never /etc/shadow


def test_a_re_import_does_not_repeat_the_edits_it_already_has(cli, old_home, tmp_path):
    r = cli("export", "slide", tmp_path / "slide.tav")
    assert r.code == 0, r.stderr
    r = cli("import", tmp_path / "slide.tav")  # the same artifact, already here with its local edit
    assert r.code == 0, r.stderr
    assert [e.output for e in _edits(old_home)] == ["/tmp/fx/out/slide-a-blue-square.mp4"]


def test_list_fits_80_columns():
    rows = [{"short_id": "2e3c47eacab8", "name": "man-skiing-lora", "frames": 24, "width": 512, "height": 512,
             "adapter": "lora", "bytes": 12_345_678, "edits": 12, "created": "2026-12-02T15:23:43.516735Z",
             "prompt": "a man is skiing down a snowy mountain on a sunny day, wide shot", "damaged": None,
             "base": "random:tiny"},
            {"short_id": "ffffffffffff", "bytes": 1000, "damaged": "unreadable", "base": None}]
    out = io.StringIO()
    Console(file=out, width=80).print(_list_table(rows, 80))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines), lines
    assert lines[1].startswith("2e3c47eacab8") and "24×512×512" in lines[1] and "a man is" in lines[1]
    assert "lora*" in lines[1]  # tuned on a built-in random base
    assert lines[2].startswith("ffffffffffff") and "damaged" in lines[2]

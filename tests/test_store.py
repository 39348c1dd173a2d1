"""The artifact store: atomic commits, content ids, refs, verification, concurrent edits, export/import safety.

No torch here: the store moves bytes, so the tests stage small byte files that stand in for adapters.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import platformdirs
import pytest

from tavcli.app.store import SCHEMA, Artifact, Store, default_root
from tavcli.errors import BadInput, Corrupt, NotFound

FILES = {
    "adapter/adapter_config.json": b'{"peft_type": "TAV_FULL"}',
    "adapter/adapter_model.safetensors": bytes(range(256)) * 40,
    "inversion.safetensors": b"\x00\x01" * 300,
    "preview.gif": b"GIF89a-not-really",
}


def put(store: Store, manifest: dict, files: dict[str, bytes] = FILES) -> Artifact:
    with store.staging() as stage:
        for rel, data in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(data)
        return store.commit(stage, manifest)


def expected_id(manifest: dict, files: dict[str, bytes]) -> str:
    """The id by the spec, computed independently of the store's code."""
    content = {k: v for k, v in manifest.items() if k not in ("id", "created")}
    content["schema"] = SCHEMA
    content["files"] = {rel: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                        for rel, data in files.items()}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def snapshot(store: Store) -> tuple[list[str], list[str]]:
    """What a failed operation must leave untouched: the artifact ids, and an empty tmp/."""
    return [a.id for a in store.list()], sorted(p.name for p in (store.root / "tmp").iterdir())


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "home")


# -- commit ---------------------------------------------------------------------------------------------------

def test_commit_puts_a_complete_artifact_with_content_id(store):
    manifest = {"name": "skiing", "prompt": "a man is skiing", "settings": {"steps": 500, "lr": 3e-5}}
    given = json.loads(json.dumps(manifest))
    art = put(store, manifest)
    assert manifest == given  # the caller's dict is not changed
    assert art.id == expected_id(manifest, FILES)
    assert art.path == store.root / "artifacts" / art.id and art.short_id == art.id[:12]
    assert art.name == "skiing" and art.created.endswith("Z")
    on_disk = json.loads((art.path / "manifest.json").read_text())
    assert on_disk == art.manifest and on_disk["id"] == art.id and on_disk["schema"] == SCHEMA
    assert on_disk["prompt"] == "a man is skiing" and on_disk["settings"] == {"steps": 500, "lr": 3e-5}
    assert list(on_disk["files"]) == sorted(FILES)
    for rel, data in FILES.items():
        assert on_disk["files"][rel] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        assert art.file(rel).read_bytes() == data
    with pytest.raises(Corrupt, match="no file 'nope'"):
        art.file("nope")
    assert snapshot(store) == ([art.id], [])  # the stage went by rename, its lock with it


def test_same_content_is_stored_once_and_different_content_is_not(store):
    a = put(store, {"name": "ski", "prompt": "p"})
    b = put(store, {"name": "ski", "prompt": "p", "created": "2001-01-01T00:00:00Z"})  # created is not content
    assert b.id == a.id and b.created == a.created
    assert [p.name for p in (store.root / "artifacts").iterdir()] == [a.id]
    c = put(store, {"prompt": "p"}, {**FILES, "preview.gif": b"other"})
    d = put(store, {"prompt": "q"})
    assert len({a.id, c.id, d.id}) == 3
    assert snapshot(store)[1] == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_staging_is_removed_when_the_block_fails(store, exc):
    with pytest.raises(exc):
        with store.staging() as stage:
            (stage / "adapter").mkdir()
            (stage / "adapter" / "adapter_model.safetensors").write_bytes(b"half")
            assert stage.parent == store.root / "tmp"
            raise exc()
    assert not stage.exists()
    assert snapshot(store) == ([], [])
    assert list((store.root / "artifacts").iterdir()) == []


def test_commit_refuses_a_stage_outside_tmp_and_a_staged_manifest(store, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(BadInput, match="not a staging dir"):
        store.commit(outside, {"prompt": "p"})
    with store.staging() as stage:
        (stage / "manifest.json").write_text("{}")
        with pytest.raises(BadInput, match="manifest.json"):
            store.commit(stage, {"prompt": "p"})
    with store.staging() as stage, pytest.raises(BadInput, match="not JSON"):
        store.commit(stage, {"prompt": object()})
    assert snapshot(store) == ([], [])


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "a/b", "abcd", "deadbeef", "0123", "é",
                                 ".", "..", "-x", ".hidden", "ABCD", "DeadBeef"])  # flags, dot dirs, any-case ids
def test_bad_names_are_refused(store, bad):
    with pytest.raises(BadInput):
        put(store, {"name": bad})
    assert snapshot(store) == ([], [])


@pytest.mark.parametrize("good", ["abc", "ski-2", "ABC", "deadbeefz", "v1.0_final", "_x", "x-", "x" * 64])
def test_good_names_are_accepted(store, good):
    assert put(store, {"name": good}).name == good
    assert store.resolve(good).name == good


def test_a_taken_name_is_refused_with_the_fix(store):
    a = put(store, {"name": "ski", "prompt": "one"})
    with pytest.raises(BadInput) as e:
        put(store, {"name": "ski", "prompt": "two"})
    assert str(e.value) == f"name 'ski' is taken by {a.short_id}; choose another --name or `tav rm ski`"
    assert snapshot(store) == ([a.id], [])


# -- list, resolve --------------------------------------------------------------------------------------------

def test_list_is_oldest_first_and_skips_broken_dirs(store):
    b = put(store, {"prompt": "b", "created": "2024-02-01T00:00:00.000000Z"})
    c = put(store, {"prompt": "c", "created": "2024-03-01T00:00:00.000000Z"})
    a = put(store, {"prompt": "a", "created": "2024-01-01T00:00:00.000000Z"})
    (store.root / "artifacts" / ("f" * 64)).mkdir()  # no manifest
    bad = store.root / "artifacts" / ("e" * 64)
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    (store.root / "artifacts" / "stray").mkdir()
    assert [x.id for x in store.list()] == [a.id, b.id, c.id]


def test_resolve_by_id_prefix_and_name(store):
    a = put(store, {"name": "skiing", "prompt": "a"})
    b = put(store, {"prompt": "b"})
    assert store.resolve(a.id) == a
    assert store.resolve(a.id[:4]) == a and store.resolve(b.short_id) == b
    assert store.resolve("skiing") == a
    with pytest.raises(NotFound, match="no artifact matches 'surfing'; see `tav list`"):
        store.resolve("surfing")
    with pytest.raises(NotFound, match="at least 4 characters"):
        store.resolve(a.id[:3])
    unused = next(p for p in ("0000", "ffff", "1234", "abcd") if not any(x.id.startswith(p) for x in (a, b)))
    with pytest.raises(NotFound):
        store.resolve(unused)


def test_a_short_name_wins_over_the_short_prefix_rule(store):
    a = put(store, {"name": "abc", "prompt": "x"})
    assert store.resolve("abc") == a


def test_an_ambiguous_prefix_lists_the_candidates(store):
    # A birthday search over manifests with no files finds two ids sharing 4 hex chars in ~300 tries.
    seen: dict[str, dict] = {}
    for i in range(100_000):
        manifest = {"name": f"take-{i}", "prompt": "p"}
        prefix = expected_id(manifest, {})[:4]
        if prefix in seen:
            break
        seen[prefix] = manifest
    a, b = put(store, seen[prefix], {}), put(store, manifest, {})
    assert a.id[:4] == b.id[:4] == prefix and a.id != b.id
    with pytest.raises(BadInput) as e:
        store.resolve(prefix)
    assert str(e.value) == (f"'{prefix}' matches 2 artifacts: {a.short_id} ({a.name}), {b.short_id} ({b.name}); "
                            "use more characters")
    n = next(k for k in range(5, 65) if a.id[:k] != b.id[:k])
    assert store.resolve(a.id[:n]) == a and store.resolve(b.id[:n]) == b


# -- verify, edits, remove ------------------------------------------------------------------------------------

def test_verify_detects_a_flipped_byte_a_deleted_file_and_a_broken_manifest(store):
    art = put(store, {"prompt": "p"})
    store.verify(art)
    weights = art.path / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(Corrupt, match="adapter/adapter_model.safetensors.*sha256"):
        store.verify(art)
    weights.write_bytes(FILES["adapter/adapter_model.safetensors"])
    store.verify(art)
    (art.path / "preview.gif").unlink()
    with pytest.raises(Corrupt, match="'preview.gif'.*missing"):
        store.verify(art)
    with pytest.raises(Corrupt, match="'preview.gif'.*missing"):
        art.file("preview.gif")
    (art.path / "preview.gif").write_bytes(FILES["preview.gif"])
    (art.path / "extra.txt").write_text("fine")  # an extra file is not corruption
    store.verify(art)
    manifest = json.loads((art.path / "manifest.json").read_text())
    manifest["prompt"] = "edited by hand"
    (art.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Corrupt, match="does not match its id"):
        store.verify(art)
    (art.path / "manifest.json").write_text("{")
    with pytest.raises(Corrupt, match="unreadable"):
        store.verify(art)


def test_edits_append_and_survive_a_torn_line(store):
    art = put(store, {"prompt": "p"})
    assert art.edits() == []
    store.append_edit(art, {"prompt": "a woman is skiing", "seed": 1})
    with open(art.path / "edits.jsonl", "ab") as f:
        f.write(b'{"prompt": "torn by a cra')  # a crash mid-append
    assert art.edits() == [{"prompt": "a woman is skiing", "seed": 1}]
    store.append_edit(art, {"prompt": "a panda is skiing", "seed": 2})
    assert art.edits() == [{"prompt": "a woman is skiing", "seed": 1}, {"prompt": "a panda is skiing", "seed": 2}]
    assert (art.path / "edits.jsonl").read_bytes().endswith(b'\n{"prompt":"a panda is skiing","seed":2}\n')
    store.verify(art)  # the log is not hashed
    with pytest.raises(BadInput):
        store.append_edit(art, {"x": float("nan")})


def _append_many(root: str, art_id: str, worker: int, n: int, barrier) -> None:
    store = Store(Path(root))
    art = store.resolve(art_id)
    barrier.wait()
    for i in range(n):
        store.append_edit(art, {"worker": worker, "i": i, "pad": "x" * 2000})  # long lines tear if unlocked


def _commit_one(root: str, prompt: str, barrier) -> None:
    store = Store(Path(root))
    barrier.wait()
    put(store, {"prompt": prompt, "name": prompt})


def test_concurrent_appends_from_processes_never_interleave(store):
    art = put(store, {"prompt": "p"})
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_append_many, args=(str(store.root), art.id, w, 50, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    lines = (art.path / "edits.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 201
    records = [json.loads(line) for line in lines[:-1]]
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(50)]
    for w in range(4):  # each process's own appends keep their order
        assert [r["i"] for r in records if r["worker"] == w] == list(range(50))


def test_concurrent_commits_from_processes_both_land(store):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_commit_one, args=(str(store.root), p, barrier)) for p in ("left", "right")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(a.name for a in store.list()) == ["left", "right"]
    for a in store.list():
        store.verify(a)
    assert snapshot(store)[1] == []


def test_remove(store):
    keep = put(store, {"prompt": "keep"})
    gone = put(store, {"name": "gone", "prompt": "gone"})
    store.append_edit(gone, {"seed": 1})
    store.remove(gone)
    assert not gone.path.exists()
    assert snapshot(store) == ([keep.id], [])
    with pytest.raises(NotFound):
        store.resolve("gone")
    with pytest.raises(NotFound):
        store.remove(gone)
    assert put(store, {"name": "gone", "prompt": "new"}).name == "gone"  # the name is free again


# -- export, import -------------------------------------------------------------------------------------------

def test_export_then_import_into_another_store_is_the_same_artifact(store, tmp_path):
    art = put(store, {"name": "skiing", "prompt": "a man is skiing"})
    store.append_edit(art, {"prompt": "a woman is skiing"})
    store.append_edit(art, {"prompt": "a panda is skiing"})
    dest = store.export(art, tmp_path / "skiing.tav")
    assert dest == tmp_path / "skiing.tav"
    with zipfile.ZipFile(dest) as zf:
        names = set(zf.namelist())
        assert zf.getinfo("files/adapter/adapter_model.safetensors").compress_type == zipfile.ZIP_STORED
    assert names == {"manifest.json", "edits.jsonl", *(f"files/{rel}" for rel in FILES)}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []

    other = Store(tmp_path / "other")
    got = other.import_file(dest)
    assert got.id == art.id and got.manifest == art.manifest and got.created == art.created
    assert {rel: got.file(rel).read_bytes() for rel in FILES} == FILES
    assert got.edits() == art.edits() == [{"prompt": "a woman is skiing"}, {"prompt": "a panda is skiing"}]
    other.verify(got)
    assert other.resolve("skiing") == got and snapshot(other) == ([art.id], [])

    # Importing again dedupes, and only edits it lacks are added.
    store.append_edit(art, {"prompt": "a dog is skiing"})
    again = other.import_file(store.export(art, tmp_path / "skiing.tav", force=True))
    assert again.id == art.id and len(other.list()) == 1
    assert [e["prompt"] for e in again.edits()] == ["a woman is skiing", "a panda is skiing", "a dog is skiing"]


def test_export_is_deterministic(store, tmp_path):
    art = put(store, {"prompt": "p"})
    one = store.export(art, tmp_path / "one.tav").read_bytes()
    assert store.export(art, tmp_path / "two.tav").read_bytes() == one


def test_export_refuses_an_existing_dest_without_force_and_a_wrong_suffix(store, tmp_path):
    art = put(store, {"prompt": "p"})
    dest = tmp_path / "out.tav"
    dest.write_bytes(b"precious")
    with pytest.raises(BadInput, match="exists; use --force to overwrite"):
        store.export(art, dest)
    assert dest.read_bytes() == b"precious"
    store.export(art, dest, force=True)
    assert zipfile.is_zipfile(dest)
    with pytest.raises(BadInput, match=r"\.tav"):
        store.export(art, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


def test_export_refuses_a_corrupt_artifact(store, tmp_path):
    art = put(store, {"prompt": "p"})
    (art.path / "preview.gif").write_bytes(b"changed")
    with pytest.raises(Corrupt):
        store.export(art, tmp_path / "out.tav")
    assert not (tmp_path / "out.tav").exists()


def _rewrite(src: Path, dest: Path, change) -> Path:
    """Copy an export member by member, letting `change(name, data)` return new bytes (or None to drop it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dest


@pytest.fixture
def exported(tmp_path) -> Path:
    source = Store(tmp_path / "source")
    art = put(source, {"name": "skiing", "prompt": "a man is skiing"})
    source.append_edit(art, {"prompt": "a woman is skiing"})
    return source.export(art, tmp_path / "skiing.tav")


def _alter_manifest(name: str, data: bytes) -> bytes:
    if name != "manifest.json":
        return data
    manifest = json.loads(data)
    manifest["prompt"] = "a man is surfing"
    return json.dumps(manifest).encode()


def _newer_schema(name: str, data: bytes) -> bytes:
    return json.dumps({**json.loads(data), "schema": SCHEMA + 1}).encode() if name == "manifest.json" else data


@pytest.mark.parametrize("case, error, match", [
    ("not-zip", BadInput, "not a tav export"),
    ("no-manifest", BadInput, "no manifest.json"),
    ("dotdot", BadInput, "unsafe"),
    ("absolute", BadInput, "unsafe"),
    ("files-dotdot", BadInput, "unsafe"),
    ("backslash", BadInput, "unsafe"),
    ("drive", BadInput, "unsafe"),
    ("stray-member", BadInput, "unsafe"),
    ("missing-file", BadInput, "not in it"),
    ("extra-file", BadInput, "not in its manifest"),
    ("newer-schema", BadInput, "upgrade tav"),
    ("altered-file", Corrupt, "sha256"),
    ("altered-manifest", Corrupt, "does not match its id"),
])
def test_import_refuses_bad_exports_and_leaves_the_store_unchanged(tmp_path, exported, case, error, match):
    target = Store(tmp_path / "target")
    kept = put(target, {"name": "kept", "prompt": "already here"})
    before = snapshot(target)
    escape = f"/tmp/tav-test-abs-{os.getpid()}-{time.time_ns()}"
    bad = tmp_path / "bad.tav"
    weights = "files/adapter/adapter_model.safetensors"
    if case == "not-zip":
        bad.write_bytes(b"this is not a zip file")
    elif case == "no-manifest":
        _rewrite(exported, bad, lambda n, d: None if n == "manifest.json" else d)
    elif case == "missing-file":
        _rewrite(exported, bad, lambda n, d: None if n == weights else d)
    elif case == "altered-file":
        _rewrite(exported, bad, lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n == weights else d)
    elif case == "altered-manifest":
        _rewrite(exported, bad, _alter_manifest)
    elif case == "newer-schema":
        _rewrite(exported, bad, _newer_schema)
    else:
        member = {"dotdot": "../evil", "absolute": escape, "files-dotdot": "files/../../x",
                  "backslash": "files\\..\\..\\evil", "drive": "files/C:/evil", "stray-member": "run.sh",
                  "extra-file": "files/extra.bin"}[case]
        _rewrite(exported, bad, lambda n, d: d)
        with zipfile.ZipFile(bad, "a") as zf:
            zf.writestr(zipfile.ZipInfo(member), b"payload")
        with zipfile.ZipFile(bad) as zf:
            assert member in zf.namelist()  # the zip really holds the hostile name
    with pytest.raises(error, match=match) as e:
        target.import_file(bad)
    assert "\n" not in str(e.value)
    assert snapshot(target) == before and target.resolve("kept") == kept
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    assert not os.path.exists(escape)


def test_import_of_a_missing_path_or_a_directory_is_an_export_error(store, tmp_path):
    with pytest.raises(BadInput):
        store.import_file(tmp_path / "nope.tav")
    with pytest.raises(BadInput):
        store.import_file(tmp_path)
    assert snapshot(store) == ([], [])


def test_import_under_a_taken_name_is_refused(store, exported):
    put(store, {"name": "skiing", "prompt": "something else"})
    before = snapshot(store)
    with pytest.raises(BadInput, match="name 'skiing' is taken"):
        store.import_file(exported)
    assert snapshot(store) == before


# -- opening, root, info --------------------------------------------------------------------------------------

def test_stale_tmp_is_cleaned_at_open_and_fresh_or_live_stages_are_kept(tmp_path):
    root = tmp_path / "home"
    store = Store(root)
    tmp = root / "tmp"
    old = time.time() - 2 * 3600
    stale_dir = tmp / "stage-crashed"
    (stale_dir / "adapter").mkdir(parents=True)
    (stale_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"half")
    stale_file = tmp / "leftover.part"
    stale_file.write_bytes(b"x")
    orphan_lock = tmp / "stage-gone.lock"
    orphan_lock.write_bytes(b"")
    fresh = tmp / "stage-fresh"
    fresh.mkdir()
    for p in (stale_dir, stale_file, orphan_lock):
        os.utime(p, (old, old))
    with store.staging() as live:  # a long job: its stage is old but its lock is held
        os.utime(live, (old, old))
        Store(root)
        assert live.is_dir()
    assert not stale_dir.exists() and not stale_file.exists() and not orphan_lock.exists()
    assert fresh.is_dir()


def test_the_store_imports_no_torch_typer_or_rich():
    code = "import sys, tavcli.app.store; print(sorted({'torch', 'typer', 'rich'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_default_root_honours_tav_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TAV_HOME", str(tmp_path / "tavhome"))
    assert default_root() == tmp_path / "tavhome"
    store = Store()
    assert store.root == tmp_path / "tavhome" and (tmp_path / "tavhome" / "artifacts").is_dir()
    monkeypatch.delenv("TAV_HOME")
    assert default_root() == Path(platformdirs.user_data_dir("tav"))


def test_info_counts_artifacts_and_bytes(store):
    assert store.info() == {"root": str(store.root), "artifacts": 0, "damaged": 0, "bytes": 0}
    a = put(store, {"prompt": "a"})
    b = put(store, {"prompt": "b"}, {"w.safetensors": b"12345"})
    store.append_edit(b, {"seed": 1})
    info = store.info()
    on_disk = sum(p.stat().st_size for p in (store.root / "artifacts").rglob("*") if p.is_file())
    assert info["artifacts"] == 2 and info["bytes"] == on_disk
    assert a.size_bytes() > sum(len(d) for d in FILES.values())  # the files plus the manifest
    assert b.size_bytes() == 5 + (b.path / "manifest.json").stat().st_size + (b.path / "edits.jsonl").stat().st_size

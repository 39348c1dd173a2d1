import json

from typer.testing import CliRunner

from tavcli.app import jobs
from tavcli.faces.cli import app


def test_tiny_bench_times_the_jobs_users_run(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    for name in ("tune", "edit"):
        real = getattr(jobs, name)
        monkeypatch.setattr(jobs, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    result = CliRunner().invoke(app, ["bench", "--tiny", "--frames", "4", "--size", "64", "--steps", "6",
                                      "--edit-steps", "2", "--device", "cpu", "--fresh-tune-steps", "2",
                                      "--edit-prompts", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # the same code path as `tav tune` and `tav edit`: tune, two edits, the 3-prompt edit, a strength-0.5 edit,
    # and the short tune that renders one preview
    assert calls == ["tune", "edit", "edit", "edit", "edit", "tune"]
    assert out["device"] == "cpu" and out["settings"]["steps"] == 6
    assert 0 < out["tune_ms_per_step"] < 10_000
    # both figures are rounded to 0.1, so the projection may differ from 0.3 × the shown median by 0.05
    assert abs(out["projected_300_steps_s"] - out["tune_ms_per_step"] * 0.3) <= 0.05 + 1e-9
    assert 0 < out["tune_steps_s"] < out["tune_total_s"]
    assert out["inversion_s"] > 0 and out["load_s"] > 0 and out["adapter_bytes"] > 10_000
    assert 0 < out["edit_warm_s"] <= out["edit_warm_total_s"]
    parts = out["edit_warm_parts"]  # the edit's first step, its steps (2) and what follows them add up to it
    assert parts["step_ms"] > 0 and parts["to_first_step_s"] > 0 and parts["after_last_step_s"] > 0
    assert abs(parts["to_first_step_s"] + parts["step_ms"] / 1000 + parts["after_last_step_s"]
               - out["edit_warm_s"]) < 0.02
    assert (tmp_path / "cache" / "tav" / "bases" / "random-tiny-seed0" / "model_index.json").is_file()  # cached
    # three prompts take longer than one; the fresh processes ran (their JSON parsed) and were timed
    assert out["edit_prompts_s"] > out["edit_warm_s"] and out["edit_prompts_peak_gib"] is None  # no GPU: null
    assert out["fresh_tune_s"] > 0 and out["fresh_edit_s"] > 0
    assert all(isinstance(n, int) and n > 0 for n in out["uncached_modules"].values())
    # a strength-0.5 edit samples half the steps (after its partial inversion); one preview was timed
    assert out["edit_strength_s"] > 0 and out["preview_s"] > 0 and out["settings"]["edit_strength"] == 0.5


def test_tiny_bench_with_compile_times_a_second_pass_from_the_cache(tmp_path, monkeypatch):
    import tavcli.engine.compiling

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    calls = []
    for name in ("tune", "edit"):
        real = getattr(jobs, name)
        monkeypatch.setattr(jobs, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    compiled = []
    real_compile = tavcli.engine.compiling.compile_regions
    # dynamo traces as on a GPU; aot_eager skips inductor's C++ build, minutes on this machine
    monkeypatch.setattr(tavcli.engine.compiling, "compile_regions",
                        lambda unet, **k: compiled.append(1) or real_compile(unet, **k | {"backend": "aot_eager"}))
    result = CliRunner().invoke(app, ["bench", "--tiny", "--frames", "4", "--size", "64", "--steps", "5",
                                      "--edit-steps", "2", "--device", "cpu", "--compile", "--fresh-tune-steps", "0",
                                      "--edit-prompts", "0", "--no-preview", "--edit-strength", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["fresh_tune_s"] is None and out["fresh_edit_s"] is None and out["edit_prompts_s"] is None
    assert out["preview_s"] is None and out["edit_strength_s"] is None  # not asked: null
    assert calls == ["tune", "edit", "edit", "tune", "edit"] and len(compiled) == 5
    assert out["settings"]["compile"] is True and out["compile_cache_was_empty"] is True
    again = out["from_cache"]
    assert again["tune_total_s"] > 0 and len(again["tune_first_steps_s"]) == 5 and again["adapter_bytes"] > 10_000
    assert 0 < again["edit"]["s"] <= again["edit"]["total_s"]


def _strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not JSON")))


def test_tiny_bench_defaults_are_small(tmp_path, monkeypatch):
    from tavcli.faces.bench import FULL, TINY, BenchSettings

    assert {k: getattr(BenchSettings(tiny=True), k) for k in TINY} == TINY
    assert {k: getattr(BenchSettings(), k) for k in FULL} == FULL
    assert BenchSettings(tiny=True, steps=9).steps == 9
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["bench", "--tiny", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    out = _strict_json(result.stdout)
    assert {k: out["settings"][k] for k in TINY} == TINY


def test_a_figure_bench_cannot_compute_is_null_not_nan(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["bench", "--tiny", "--steps", "2", "--inversion-steps", "2", "--edit-steps",
                                      "1", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    out = _strict_json(result.stdout)
    assert out["tune_ms_per_step"] is None and out["projected_300_steps_s"] is None
    assert out["inversion_ms_per_step"] is None and out["inversion_s"] > 0


def test_bench_counts_the_imported_modules_a_fresh_process_compiles_again(tmp_path, monkeypatch):
    import importlib
    import py_compile
    import sys

    from tavcli.app.progress import Reporter
    from tavcli.faces.bench import _warn_uncached, uncached_modules

    package = tmp_path / "tav_probe_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "leaf.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as PYTHONDONTWRITEBYTECODE=1 would
    try:
        importlib.import_module("tav_probe_package.leaf")
        assert uncached_modules()["tav_probe_package"] == 2
        leaf = str(package / "leaf.py")
        py_compile.compile(leaf, cfile=importlib.util.cache_from_source(leaf))  # what compileall writes
        assert uncached_modules()["tav_probe_package"] == 1

        class Notes(Reporter):
            lines: list[str] = []

            def log(self, message: str) -> None:
                self.lines.append(message)

        _warn_uncached({"tav_probe_package": 1}, Notes())
        assert len(Notes.lines) == 1 and "1 imported modules" in Notes.lines[0]
        assert f"compileall -q {tmp_path}" in Notes.lines[0]
        _warn_uncached({}, Notes())
        assert len(Notes.lines) == 1  # nothing uncached: nothing said
    finally:
        for name in [n for n in sys.modules if n.startswith("tav_probe_package")]:
            del sys.modules[name]

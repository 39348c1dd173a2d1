"""`tav` ends without Python's module teardown (seconds after every command), but only once its exit hooks
have run and its output is flushed, with the exit code its command chose; and it refuses a typo before it
imports the model libraries (seconds more)."""

import subprocess
import sys
import textwrap


def _tav(tmp_path, *args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """`tav ARGS` as its console script runs it, after `prelude` (hooks the test watches for)."""
    script = textwrap.dedent(prelude) + textwrap.dedent(f"""
        import sys
        sys.argv = ["tav", *{list(args)!r}]
        from tavcli.faces.cli import run
        run()
        """)
    env = {"TAV_HOME": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)


_WATCHERS = """
    import atexit, pathlib, sys
    HERE = pathlib.Path({here!r})
    atexit.register(lambda: (HERE / "atexit-ran").write_text("yes"))

    class Teardown:  # its __del__ runs only in Python's own teardown of the modules
        def __init__(self, path):
            self.path, self.open = path, open

        def __del__(self):
            with self.open(self.path, "w") as f:
                f.write("yes")

    sys.modules["tav_teardown_probe"] = type(sys)("tav_teardown_probe")
    sys.modules["tav_teardown_probe"].probe = Teardown(str(HERE / "teardown-ran"))
"""


def test_a_command_ends_with_its_exit_code_its_output_and_its_exit_hooks_but_no_teardown(tmp_path):
    done = _tav(tmp_path, "list", "--json", prelude=_WATCHERS.format(here=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # flushed before the process ended
    assert (tmp_path / "atexit-ran").read_text() == "yes"
    assert not (tmp_path / "teardown-ran").exists()  # the modules were never torn down


def test_a_failing_command_keeps_its_exit_code_and_its_message(tmp_path):
    from tavcli.errors import NotFound, exit_code

    done = _tav(tmp_path, "show", "0123456789ab", prelude=_WATCHERS.format(here=str(tmp_path)))
    assert done.returncode == exit_code(NotFound("x")) != 0
    assert done.stderr.startswith("tav: error:") and "0123456789ab" in done.stderr
    assert (tmp_path / "atexit-ran").exists() and not (tmp_path / "teardown-ran").exists()


def test_a_thread_still_running_gets_the_ordinary_exit_that_waits_for_it(tmp_path):
    prelude = _WATCHERS.format(here=str(tmp_path)) + """
    import threading, time
    def late():
        time.sleep(0.5)
        (HERE / "thread-finished").write_text("yes")
    threading.Thread(target=late).start()
    """
    done = _tav(tmp_path, "list", "--json", prelude=prelude)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "thread-finished").exists()  # joined, not killed
    assert (tmp_path / "teardown-ran").exists()  # the ordinary exit: modules torn down


def test_a_profiler_watching_gets_the_ordinary_exit_so_it_can_write_its_file(tmp_path):
    profile = tmp_path / "tav.prof"
    prelude = _WATCHERS.format(here=str(tmp_path)) + f"""
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
    atexit.register(lambda: profiler.dump_stats({str(profile)!r}))
    """
    done = _tav(tmp_path, "list", "--json", prelude=prelude)
    assert done.returncode == 0, done.stderr
    assert profile.stat().st_size > 0 and (tmp_path / "teardown-ran").exists()



def test_a_mistyped_id_or_clip_is_refused_before_the_model_libraries_are_imported(tmp_path):
    """Importing torch and diffusers takes seconds (8 s on the H200 machine): a typo must not wait for it."""
    prelude = """
    import atexit, pathlib, sys
    atexit.register(lambda: pathlib.Path({seen!r}).write_text(
        " ".join(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)))
    """
    from tavcli.app import builtin

    clip = str(builtin.synthetic_clip(tmp_path / "clip.mp4", frames=4))
    for i, (args, code, words) in enumerate(((("edit", "nosuch", "a dog"), 3, "no artifact matches 'nosuch'"),
                              (("tune", str(tmp_path / "missing.mp4"), "a man is skiing"), 2, "not found"),
                              (("tune", clip, "a man", "--frames", "4", "--base", str(tmp_path / "nobase")), 2,
                               "neither a folder nor a hub id"))):
        seen = tmp_path / f"imported-{i}.txt"
        done = _tav(tmp_path, *args, prelude=prelude.format(seen=str(seen)))
        assert done.returncode == code and words in done.stderr, done.stderr
        assert seen.read_text() == ""  # none of them was imported

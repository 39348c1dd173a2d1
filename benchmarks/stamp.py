"""Run a command; print each line of its stderr with the seconds since it started (a stage timeline):

    python benchmarks/stamp.py python -m tavcli tune clip.mp4 "a man is skiing"
"""
import subprocess
import sys
import time

started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
for line in proc.stderr:
    print(f"{time.perf_counter() - started:8.2f}  {line.rstrip()}", flush=True)
out = proc.stdout.read()
proc.wait()
print(f"{time.perf_counter() - started:8.2f}  exit {proc.returncode}  stdout: {out.strip()[:300]}", flush=True)

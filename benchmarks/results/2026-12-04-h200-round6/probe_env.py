"""Where this machine's Python keeps bytecode for the packages tav imports: is it written, is it there."""
import importlib.util
import os
import sys

print(sys.version.split()[0], "dont_write_bytecode", sys.dont_write_bytecode, "pycache_prefix", sys.pycache_prefix,
      "PYTHONDONTWRITEBYTECODE", os.environ.get("PYTHONDONTWRITEBYTECODE"))
for name in ("torch", "transformers", "peft", "diffusers", "safetensors", "huggingface_hub", "accelerate"):
    spec = importlib.util.find_spec(name)
    if spec is None:
        print(name, "absent")
        continue
    folder = os.path.dirname(spec.origin)
    cache = os.path.join(folder, "__pycache__")
    sources = sum(f.endswith(".py") for _, _, files in os.walk(folder) for f in files)
    compiled = sum(f.endswith(".pyc") for _, _, files in os.walk(folder) for f in files)
    print(f"{name}: {folder} writable={os.access(folder, os.W_OK)} top_pycache={os.path.isdir(cache)} "
          f"py={sources} pyc={compiled}")

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

TINY_UNET = dict(
    sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8,
)


def make_tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """A small SD-shaped UNet with random weights (the same ones for the same seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        # Random (not default) norms and biases so that tests notice a missed affine or a swapped layer.
        for name, p in unet.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.data.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    return unet.eval()


@pytest.fixture
def tiny_unet():
    return make_tiny_unet


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny random SD v1-shaped diffusers folder, built once per test run."""
    from tavcli.method.random_base import save_random_base

    return save_random_base(tmp_path_factory.mktemp("bases") / "tiny-sd", arch="tiny", seed=0)


@pytest.fixture
def tiny_base(tiny_base_dir):
    """A freshly loaded tiny base (its UNet gets inflated by the test, so never shared)."""
    from tavcli.method.models import load_base

    return load_base(str(tiny_base_dir), device="cpu")


# Triton 3.6's interpreter turns a kernel's scalar argument (a 1-element array) into a loop bound with int(),
# which NumPy 2 refuses; the compiled kernels are unaffected. Taken from the array's one element instead.
_INTERPRETER_SCALARS = """
import triton.runtime.interpreter as _interpreter
_patch = _interpreter._patch_lang_tensor
def _patch_lang_tensor(tensor, scope):
    _patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
_interpreter._patch_lang_tensor = _patch_lang_tensor
"""


CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
# A kernel test's two runs: compiled on a CUDA GPU, or in Triton's interpreter where triton is and no GPU.
kernels_on_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (the interpreter test runs the kernels "
                                     "without)")
kernels_in_interpreter = pytest.mark.skipif(CUDA or not HAS_TRITON, reason="the CUDA test runs the kernels; "
                                            "without triton there are none")


def on_cuda_per_shape_and_dtype(shapes: list) -> callable:
    """A kernel's CUDA test, once per shape in `shapes` and per dtype (bf16, fp32), skipped without a GPU."""
    def mark(test):
        for decorate in (pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32]),
                         pytest.mark.parametrize("shape", shapes), kernels_on_cuda):
            test = decorate(test)
        return test
    return mark


def run_in_triton_interpreter(code: str) -> None:
    """Run `code` in a subprocess with TRITON_INTERPRET=1 (Triton's kernels on the CPU, by NumPy), from the
    repository root; it must print `ok` as its last line."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETER_SCALARS + code], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def hub_cache_with(folder: Path, repo_id: str, cache: Path) -> Path:
    """`cache` (an HF_HUB_CACHE) holding `folder` as the main revision of hub repo `repo_id`, laid out as
    huggingface_hub lays out a download (files copied, not linked to blobs: the client reads either)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter from the repository root (huggingface_hub reads its settings at import)."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[1])

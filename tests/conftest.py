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

"""The host's default read resolution (``attn_res=None``): what each family reads without the user knowing its
cross-attention resolutions or token grid."""

import pytest
from diffusers import UNet2DConditionModel

import ait2i
from ait2i.capture.store import pooled_res
from ait2i.capture.unet import default_read_res
from ait2i.shapes import model as M

SD15 = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD15_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
SDXL = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
SDXL_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def _unet(down, up):
    """A UNet with the block layout of a real family and tiny channels (the resolutions depend on the layout only)."""
    n = len(down)
    return UNet2DConditionModel(
        block_out_channels=(8,) * n, layers_per_block=1, down_block_types=down, up_block_types=up,
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4, sample_size=8,
    )  # fmt: skip


@pytest.mark.parametrize(
    "down, up, latent, expected",
    [
        (SD15, SD15_UP, (64, 64), (16, 16)),  # SD 1.x at 512 px: Attend-and-Excite's 16x16
        (SD15, SD15_UP, (96, 96), (24, 24)),  # SD 2.x at 768 px (16x16 does not exist there)
        (SD15, SD15_UP, (64, 96), (16, 24)),  # 512x768: the shorter side decides
        (SD15, SD15_UP, (32, 32), (16, 16)),  # 256 px
        (SDXL, SDXL_UP, (128, 128), (32, 32)),  # SDXL at 1024 px: 64x64 and 32x32 only
        (SD15, SD15_UP, (8, 8), (8, 8)),  # nothing 16 or larger: the finest it has
    ],
)
def test_unet_default_read_resolution(down, up, latent, expected):
    assert default_read_res(_unet(down, up), latent, ("up", "down", "mid")) == expected


def test_unet_default_follows_from_where():
    unet = _unet(SD15, SD15_UP)
    assert default_read_res(unet, (64, 64), ("up", "down", "mid")) == (16, 16)
    assert default_read_res(unet, (64, 64), ("mid",)) == (8, 8)  # the mid block has only 8x8: the finest there


def test_shapesworld_unet_default_is_its_tuned_16():
    unet = M.load_pipeline().unet
    assert default_read_res(unet, (32, 32), ait2i.get_method("ait2i").from_where) == (16, 16)


@pytest.mark.parametrize(
    "grid, expected",
    [((64, 64), (16, 16)), ((32, 32), (16, 16)), ((48, 48), (16, 16)), ((16, 16), (16, 16)), ((24, 24), (24, 24)),
     ((15, 16), (15, 16)), ((64, 48), (64, 48))],
)  # fmt: skip
def test_transformer_default_read_resolution(grid, expected):
    assert pooled_res(grid, None) == expected


def test_the_default_is_the_hosts_choice_and_an_explicit_side_is_kept():
    assert ait2i.get_method("ait2i").attn_res is None and ait2i.AIT2IConfig().attn_res is None
    assert pooled_res((64, 64), 32) == (32, 32)
    with pytest.raises(ValueError, match="or None for the host's default"):
        pooled_res((24, 24), 16)

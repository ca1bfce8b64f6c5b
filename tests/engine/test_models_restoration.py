"""Image-to-image models (edsr, rcan, dfcan), the masked autoencoder (mae, mae_vit_base) and UNETR."""

import pytest
import torch

from napari_bioflow.engine.models import create_model, list_models
from napari_bioflow.engine.models.mae import dither_ranks

TINY = {
    "edsr": {"n_feats": 8, "n_resblocks": 2},
    "rcan": {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 8, "reduction": 4},
    "dfcan": {"n_feats": 8, "n_groups": 2, "n_blocks": 2, "reduction": 4},
    "mae": {
        "patch_size": 4,
        "embed_dim": 32,
        "depth": 4,
        "num_heads": 2,
        "decoder_embed_dim": 16,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
        "img_size": 32,
    },
    "unetr": {"patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 32, "feature_size": 4},
}
ENCODER = {k: v for k, v in TINY["mae"].items() if not k.startswith("decoder")}  # shared by mae and unetr
SPATIAL = {2: (32, 32), 3: (8, 16, 16)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def tiny_mae(ndim=2, channels=1, **options):
    return create_model("mae", ndim=ndim, in_channels=channels, out_channels=channels, **{**TINY["mae"], **options})


def test_registered():
    assert {"edsr", "rcan", "dfcan", "mae", "mae_vit_base", "unetr", "unetr_vit_base"} <= set(list_models(2))
    assert {"mae", "mae_vit_base", "unetr", "unetr_vit_base"} <= set(list_models(3))
    assert not {"edsr", "rcan", "dfcan"} & set(list_models(3))


@pytest.mark.parametrize(
    "name, ndim", [("edsr", 2), ("rcan", 2), ("dfcan", 2), ("mae", 2), ("mae", 3), ("unetr", 2), ("unetr", 3)]
)
def test_output_shape_equals_input(name, ndim):
    torch.manual_seed(0)
    model = create_model(name, ndim=ndim, in_channels=2, out_channels=3, **TINY[name])
    x = torch.randn(2, 2, *SPATIAL[ndim])
    assert model(x).shape == (2, 3, *SPATIAL[ndim])
    assert model.size_divisor == (4 if name in ("mae", "unetr") else 1)


@pytest.mark.parametrize(
    "name, ndim, count",
    [
        ("edsr", 2, 1_219_841),
        ("rcan", 2, 1_376_833),
        ("dfcan", 2, 1_819_969),
        ("mae", 2, 5_267_968),
        ("mae", 3, 6_746_368),
        ("unetr", 2, 6_119_425),
        ("unetr", 3, 9_208_097),
    ],
)
def test_default_parameter_counts_are_pinned(name, ndim, count):
    # a changed count means old checkpoints no longer load
    n = n_params(create_model(name, ndim=ndim, in_channels=1, out_channels=1))
    print(f"{name} {ndim}D: {n:,} parameters")
    assert n == count


def test_vit_base_preset_matches_biapy_size():
    # BiaPy's ViT-B MAE reports ~111.3 M for 256x256x1: it also counts its fixed sin-cos position tables
    # (257 x 768 + 257 x 512 = 328,960 frozen "parameters"), which are computed here and not stored
    model = create_model("mae_vit_base", ndim=2, in_channels=1, out_channels=1)
    n, n_encoder = n_params(model), n_params(model.encoder)
    print(f"mae_vit_base 2D: {n:,} parameters ({n_encoder:,} in the encoder)")
    assert n == 110_999_808 and n_encoder == 85_254_144
    assert model.size_divisor == 16 and len(model.encoder.blocks) == 12 and len(model.decoder.blocks) == 8
    assert model.encoder.blocks[0].attn.num_heads == 12 and model.decoder.blocks[0].attn.num_heads == 16
    with torch.no_grad():  # a small input: 4 tokens
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_mae_loss_on_masked_pixels_and_backward():
    torch.manual_seed(0)
    model = tiny_mae()
    x = torch.rand(2, 1, 32, 32)
    pred, mask = model.forward_mae(x)
    assert pred.shape == x.shape and mask.shape == (2, 1, 32, 32)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    loss = ((pred - x) ** 2 * mask).sum() / mask.sum() / x.shape[1]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # the MAE checks
    masked_input, pasted = x * (1 - mask), pred * mask + x * (1 - mask)
    assert torch.equal(masked_input[mask.bool()], torch.zeros(int(mask.sum())))
    assert torch.equal(pasted[~mask.bool()], x[~mask.bool()])


@pytest.mark.parametrize("ndim", [2, 3])
def test_hidden_pixels_do_not_leak_into_the_prediction(ndim):
    torch.manual_seed(0)
    model = tiny_mae(ndim).eval()
    x = torch.rand(1, 1, *SPATIAL[ndim])
    pred, mask = model.forward_mae(x)
    changed = x + 5 * mask * torch.rand_like(x)  # only hidden pixels change
    pred2, mask2 = model.forward_mae(changed)
    assert torch.equal(mask, mask2) and torch.allclose(pred, pred2, atol=1e-5)
    assert not torch.allclose(model.forward_mae(x + 5 * (1 - mask))[0], pred, atol=1e-3)


def test_grid_mask_is_a_checkerboard_at_half():
    model = tiny_mae(mask_type="grid", mask_ratio=0.5)
    mask = model.make_mask(3, (8, 8))
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(mask, ((i + j) % 2 == 0).flatten().expand(3, -1))
    mask3 = model.make_mask(1, (4, 4, 4))[0]
    z, y, x = torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij")
    assert torch.equal(mask3, ((z + y + x) % 2 == 0).flatten())
    # a token grid one token deep in Z: the 2D checkerboard in YX
    assert torch.equal(model.make_mask(1, (1, 2, 2))[0], torch.tensor([True, False, False, True]))


@pytest.mark.parametrize(
    "ratio, grid", [(0.5, (8, 8)), (0.25, (8, 8)), (0.75, (16, 16)), (0.3, (5, 7)), (0.5, (3, 5)), (0.6, (4, 4, 4))]
)
def test_mask_fraction_equals_mask_ratio(ratio, grid):
    n_tokens = torch.Size(grid).numel()
    expected = int(ratio * n_tokens + 0.5)
    for mask_type in ("grid", "random"):
        torch.manual_seed(0)
        mask = tiny_mae(ndim=len(grid), mask_type=mask_type, mask_ratio=ratio).make_mask(4, grid)
        assert mask.shape == (4, n_tokens) and mask.dtype == torch.bool
        assert (mask.sum(1) == expected).all(), mask_type
    # the random mask differs between samples; the grid mask does not
    assert not all(torch.equal(mask[0], m) for m in mask[1:])


def test_dither_ranks_are_a_permutation():
    for grid in [(8, 8), (3, 5), (1, 2, 2), (4, 4, 4), (2, 3, 5)]:
        ranks = dither_ranks(grid)
        assert ranks.shape == (torch.Size(grid).numel(),) and ranks.unique().numel() == ranks.numel()


def test_forward_is_deterministic_under_a_seed_in_eval():
    model = tiny_mae(mask_type="random").eval()
    x = torch.rand(2, 1, 32, 32)
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    assert torch.equal(a, model(x))


def test_forward_mae_accepts_a_given_mask():
    torch.manual_seed(0)
    model = tiny_mae(mask_type="random").eval()
    x = torch.rand(2, 1, 32, 32)
    pred, mask = model.forward_mae(x)
    for given in (mask, mask[:, 0, ::4, ::4], mask[:, 0, ::4, ::4].flatten(1)):  # pixel, token grid, (B, L)
        pred2, mask2 = model.forward_mae(x, mask=given)
        assert torch.equal(mask2, mask) and torch.allclose(pred2, pred, atol=1e-6)
    uneven = torch.zeros(2, 64, dtype=torch.bool)
    uneven[0, :10], uneven[1, :20] = True, True
    with pytest.raises(ValueError, match="same number of tokens"):
        model.forward_mae(x, mask=uneven)


@pytest.mark.parametrize("ndim", [2, 3])
def test_patchify_round_trip(ndim):
    model = tiny_mae(ndim, channels=2)
    x = torch.randn(2, 2, *SPATIAL[ndim])
    tokens = model.patchify(x)
    assert tokens.shape == (2, torch.Size(SPATIAL[ndim]).numel() // 4**ndim, 4**ndim * 2)
    assert torch.equal(model.unpatchify(tokens, [s // 4 for s in SPATIAL[ndim]]), x)
    # one token's pixels are one block of the image
    assert torch.equal(tokens[0, 0].reshape(*[4] * ndim, 2).movedim(-1, 0), x[(0, slice(None)) + (slice(0, 4),) * ndim])


def test_input_size_must_be_a_multiple_of_the_token_size():
    with pytest.raises(ValueError, match=r"input size \(30, 32\) is not a multiple of 4"):
        tiny_mae()(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"input size \(30, 32\) is not a multiple of 4"):
        create_model("unetr", ndim=2, in_channels=1, out_channels=1, **TINY["unetr"])(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="not a multiple of the token size"):
        tiny_mae(img_size=30)


def test_bad_options():
    with pytest.raises(ValueError, match="mask_type"):
        tiny_mae(mask_type="block")
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="num_heads"):
        tiny_mae(num_heads=5)
    with pytest.raises(ValueError, match="power-of-two"):
        create_model("unetr", ndim=2, in_channels=1, out_channels=1, **{**TINY["unetr"], "patch_size": 6})


@pytest.mark.parametrize("ndim", [2, 3])
def test_learned_position_embedding_resizes(ndim):
    model = tiny_mae(ndim, pos_embed="learned", img_size=16)
    grid = (4,) * ndim
    assert model.encoder.pos_embed.shape == (1, 4**ndim, 32)
    assert model.decoder.pos_embed.shape == (1, 4**ndim, 16)
    x = torch.randn(1, 1, *SPATIAL[ndim])  # a larger grid than img_size's
    assert model(x).shape == x.shape and grid != tuple(s // 4 for s in SPATIAL[ndim])


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_mae_encoder_starts_a_unetr(pos_embed):
    torch.manual_seed(0)
    mae = tiny_mae(3, pos_embed=pos_embed)
    unetr = create_model("unetr", ndim=3, in_channels=1, out_channels=2, **{**TINY["unetr"], "pos_embed": pos_embed})
    mae_sd, unetr_sd = mae.state_dict(), unetr.state_dict()
    encoder = {k: v for k, v in mae_sd.items() if k.startswith("encoder.")}
    for key in [
        "encoder.patch_embed.proj.weight",
        "encoder.cls_token",
        "encoder.blocks.3.attn.qkv.weight",
        "encoder.blocks.3.mlp.fc1.weight",
        "encoder.norm.weight",
    ]:
        assert key in encoder
    assert ("encoder.pos_embed" in encoder) == (pos_embed == "learned")
    # every encoder tensor has a same-named, same-shaped counterpart, and the UNETR's encoder has nothing else
    assert {k: v.shape for k, v in encoder.items()} == {
        k: v.shape for k, v in unetr_sd.items() if k.startswith("encoder.")
    }
    # (a learned position embedding starts as sin-cos in both)
    assert not any(torch.equal(unetr_sd[k], v) for k, v in encoder.items() if v.std() > 0 and "pos_embed" not in k)
    result = unetr.load_state_dict(encoder, strict=False)
    assert not result.unexpected_keys and all(not k.startswith("encoder.") for k in result.missing_keys)
    for key, value in unetr.state_dict().items():
        if key.startswith("encoder."):
            assert torch.equal(value, mae_sd[key]), key
    x = torch.randn(1, 1, *SPATIAL[3])
    assert unetr(x).shape == (1, 2, *SPATIAL[3])


def test_unetr_skips_come_from_evenly_spaced_blocks():
    model = create_model("unetr", ndim=2, in_channels=1, out_channels=1, embed_dim=32, num_heads=2, depth=12)
    assert model.skip_blocks == [3, 6, 9] and len(model.decoder) == 4 and len(model.skips) == 3
    assert [len(s) for s in model.skips] == [3, 2, 1]  # level 1 needs three 2x steps up from the token grid


def test_vit_base_presets_share_the_encoder():
    # the same shapes for every encoder tensor: a ViT-B MAE checkpoint starts a ViT-B UNETR
    mae = create_model("mae_vit_base", ndim=2, in_channels=1, out_channels=1).encoder
    unetr = create_model("unetr_vit_base", ndim=2, in_channels=1, out_channels=1).encoder
    assert {k: v.shape for k, v in mae.state_dict().items()} == {k: v.shape for k, v in unetr.state_dict().items()}

"""The spatial helpers and the downsampler, against hand-written index arithmetic and torch's own layers."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from visattn.blocks import ConvDownsample, pad_to_multiple, stripe_partition, stripe_reverse, window_apply


def test_pad_to_multiple_pads_bottom_and_right_in_either_layout():
    x = torch.randn(2, 3, 5, 7)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8)
    torch.testing.assert_close(padded[..., :5, :7], x)
    assert padded[..., 5:, :].abs().sum() == 0 and padded[..., 7:].abs().sum() == 0
    nhwc = pad_to_multiple(x.permute(0, 2, 3, 1), (2, 3), channels_last=True)
    assert nhwc.shape == (2, 6, 9, 3)
    torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), pad_to_multiple(x, (2, 3)))
    assert pad_to_multiple(x, (5, 7)) is x


@pytest.mark.parametrize(("mode", "grid", "window"), [("global", (1, 1), (9, 10)), ("vertical", (1, 3), (9, 4)),
                                                      ("horizontal", (3, 1), (4, 10))])
def test_stripes_cover_the_map_once_and_reverse_exactly(mode, grid, window):
    x = torch.randn(2, 9, 10, 3)
    windows, got_grid = stripe_partition(x, mode, split=4)
    assert got_grid == grid and windows.shape == (2 * grid[0] * grid[1], *window, 3)
    stripe = 1 if mode == "vertical" else grid[1]  # second stripe of the first image: columns / rows 4..7
    if mode == "vertical":
        torch.testing.assert_close(windows[stripe], x[0, :, 4:8])
    elif mode == "horizontal":
        torch.testing.assert_close(windows[1], x[0, 4:8])
    torch.testing.assert_close(stripe_reverse(windows, got_grid, (9, 10)), x)


def test_window_apply_sees_full_windows_and_smaller_edge_windows():
    x = torch.arange(2 * 6 * 7, dtype=torch.float64).view(2, 6, 7, 1)
    sizes = []

    def tile_mean(tiles):
        sizes.append(tuple(tiles.shape[1:3]))
        return tiles.mean(dim=(1, 2), keepdim=True).expand_as(tiles)

    out = window_apply(x, 4, tile_mean)
    assert sorted(sizes) == [(2, 3), (2, 4), (4, 3), (4, 4)]
    for rows in (slice(0, 4), slice(4, 6)):
        for cols in (slice(0, 4), slice(4, 7)):
            torch.testing.assert_close(out[:, rows, cols], x[:, rows, cols].mean(dim=(1, 2), keepdim=True)
                                       .expand_as(x[:, rows, cols]))


def test_conv_downsample_is_norm_after_a_padded_strided_conv():
    torch.manual_seed(0)
    down = ConvDownsample(3, 8, 4, 4, norm_layer=nn.LayerNorm, pad_multiple=4, output_fmt="NHWC").double()
    x = torch.randn(2, 3, 9, 6, dtype=torch.float64)
    conv = F.conv2d(F.pad(x, (0, 2, 0, 3)), down.conv.weight, down.conv.bias, stride=4)
    expected = F.layer_norm(conv.permute(0, 2, 3, 1), (8,), down.norm.weight, down.norm.bias)
    torch.testing.assert_close(down(x), expected)
    assert down(x).shape == (2, 3, 2, 8)  # ceil(9 / 4), ceil(6 / 4)


def test_conv_downsample_norm_first_normalises_the_input():
    torch.manual_seed(0)
    down = ConvDownsample(4, 6, 2, 2, norm_first=True, pad_multiple=2).double().eval()
    with torch.no_grad():
        down.norm.running_mean.uniform_()
        down.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    normed = (x - down.norm.running_mean.view(1, -1, 1, 1)) / (down.norm.running_var.view(1, -1, 1, 1) + 1e-5).sqrt()
    expected = F.conv2d(F.pad(normed, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    torch.testing.assert_close(down(x), expected)
    assert list(down.state_dict())[0].startswith("norm.")  # the official BiFormer-STL merging order


def test_conv_downsample_takes_channels_last_input():
    down = ConvDownsample(4, 6, 3, 2, 1, norm_layer=nn.LayerNorm, input_fmt="NHWC", output_fmt="NHWC")
    x = torch.randn(2, 7, 5, 4)
    assert down(x).shape == (2, 4, 3, 6)
    with pytest.raises(ValueError, match="'NCHW' or 'NHWC'"):
        ConvDownsample(4, 6, 3, 2, input_fmt="NLC")

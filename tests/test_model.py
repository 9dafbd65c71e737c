"""The net: architecture, the authors' checkpoint, weight norm, concurrency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowlux.engine import Engine, EngineConfig
from lowlux.errors import WeightsError
from lowlux.model import LowLightNet, apply_weight_norm, count_parameters, fold_weight_norm, msra_init
from lowlux.weights import load_model, load_state, save_weights


def test_parameter_count_matches_the_paper():
    net = LowLightNet()
    assert count_parameters(net) == 783_432  # folded, as used for inference
    assert count_parameters(apply_weight_norm(net)) == 784_768  # with weight norm, as trained


def test_output_is_full_resolution_srgb_in_unit_range():
    torch.manual_seed(0)
    net = msra_init(LowLightNet()).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 3, 64, 96)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", ["rand", "grad"])
def test_reference_outputs_of_the_authors_code_are_reproduced(authors_weights, vectors, name):
    net = load_model(authors_weights)
    x = torch.from_numpy(np.load(vectors / f"input_{name}.npy"))
    expected = np.load(vectors / f"output_{name}.npy")
    with torch.no_grad():
        out = net(x).numpy()
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 1e-5


def test_weight_norm_folding_is_exact(tmp_path):
    torch.manual_seed(1)
    net = apply_weight_norm(msra_init(LowLightNet())).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        before = net(x)
        path = save_weights(net, tmp_path / "w.safetensors")
        after = load_model(path)(x)
    assert torch.equal(before, after)
    assert not any("parametrizations" in k for k in load_state(path))


def test_authors_checkpoint_loads_into_our_layer_names(authors_weights):
    state = load_state(authors_weights)
    assert set(state) == set(LowLightNet().state_dict())


def test_weights_that_do_not_fit_are_refused_with_the_file_named(tmp_path):
    bad = tmp_path / "other.pt"
    torch.save({"model": {"conv.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(WeightsError, match="other.pt"):
        load_model(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="junk.safetensors"):
        load_model(junk)
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_concurrent_encoders_give_the_same_output(tiny_weights):
    x = torch.rand(1, 1, 128, 160) * 0.5
    plain = Engine(EngineConfig(weights=tiny_weights, backend="torch")).forward(x)
    concurrent = Engine(EngineConfig(weights=tiny_weights, backend="torch", concurrent=True)).forward(x)
    assert (plain - concurrent).abs().max() <= 1e-6


def test_concurrent_encoders_end_in_the_nets_output_stage(tmp_path):
    from lowlux.model import LINEAR_CAMERA_WB

    torch.manual_seed(4)
    net = msra_init(LowLightNet(LINEAR_CAMERA_WB))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)  # moderate activations (see test_tiling)
    weights = save_weights(net, tmp_path / "linear.safetensors")
    x = torch.rand(1, 1, 128, 160) * 0.5
    with torch.no_grad():
        ref = load_model(weights)(x)
    concurrent = Engine(EngineConfig(weights=weights, backend="torch", concurrent=True, tile=0, anchor=False,
                                     chroma=False)).forward(x)
    assert (concurrent - ref).abs().max() <= 1e-6


def test_channels_last_matches_within_float_rounding(authors_weights, vectors):
    x = torch.from_numpy(np.load(vectors / "input_grad.npy"))
    plain = Engine(EngineConfig(weights=authors_weights, backend="torch")).forward(x)
    cl = Engine(EngineConfig(weights=authors_weights, backend="torch", channels_last=True)).forward(x)
    assert (plain - cl).abs().max() <= 1e-5


def test_a_model_in_training_saves_folded_weights(tmp_path):
    torch.manual_seed(2)
    net = apply_weight_norm(msra_init(LowLightNet())).train()
    net(torch.rand(1, 1, 64, 64)).mean().backward()  # parametrised weights with gradients, as mid-training
    path = save_weights(net, tmp_path / "mid.safetensors")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), load_model(path)(x))


def test_linear_net_ends_in_the_tone_curves_inverse_and_keeps_the_parameter_count():
    import torch

    from lowlux import curves
    from lowlux.model import LINEAR_CAMERA_WB, LowLightNet, count_parameters

    srgb, linear = LowLightNet(), LowLightNet(LINEAR_CAMERA_WB)
    linear.load_state_dict(srgb.state_dict())
    assert count_parameters(linear) == count_parameters(srgb) == 783_432
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(linear(x), curves.decode(srgb(x)), atol=1e-6)


def test_an_unknown_output_space_is_refused():
    import pytest

    from lowlux.model import LowLightNet

    with pytest.raises(ValueError, match="output space"):
        LowLightNet("xyz")


def test_the_blocks_fast_forms_compute_the_papers_convolutions():
    # The forward forms skip concatenations and the narrow grouped conv (docs/benchmarks.md, round 2);
    # the same parameters through the plain modules give the same values.
    from torch.nn import functional as F

    from lowlux.model import HSE_SCALE, channel_shuffle

    torch.manual_seed(3)
    net = msra_init(LowLightNet()).eval()
    packed = torch.rand(1, 4, 64, 96)
    mse, hse, lse = torch.rand(1, 64, 16, 24), torch.rand(1, 64, 16, 24), torch.rand(1, 12, 64, 96)
    with torch.no_grad():
        head = net.hse.reduce[0](F.pixel_unshuffle(packed, HSE_SCALE))
        assert (net.hse.head(packed) - head).abs().max() <= 1e-5
        fb1 = net.fb1.expand(net.fb1.reduce(channel_shuffle(torch.cat((mse, hse), 1), 2)))
        fb1 = F.pixel_shuffle(F.leaky_relu(fb1, 0.2), 4)
        assert (net.fb1(mse, hse) - fb1).abs().max() <= 1e-5
        fb2 = F.pixel_shuffle(net.fb2.conv(torch.cat((lse, fb1), 1)), 2).clamp(0, 1)
        assert (net.fb2(lse, fb1) - fb2).abs().max() <= 1e-5


def test_the_fast_forms_train_like_the_plain_modules():
    # Weight norm stays a parametrisation of the same modules: gradients reach every parameter.
    torch.manual_seed(4)
    net = apply_weight_norm(msra_init(LowLightNet()))
    net(torch.rand(1, 1, 64, 64)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())

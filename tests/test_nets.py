"""Networks: registry, shapes, default depth/width per model, how depth counts layers, soft thresholding."""

import pytest
import torch

from napari_rverdict.learn.nets import (
    SoftThreshold,
    available_networks,
    build_network,
    count_linear_layers,
    default_hyperparameters,
    resnet_stages,
)


@pytest.mark.parametrize("name", ["mlp", "resnetreg", "resnetreg-st"])
def test_output_shapes_train_and_eval(name):
    torch.manual_seed(0)
    net = build_network(name, 10, 7, depth=11, width=16)
    x = torch.rand(5, 10)
    assert net(x).shape == (5, 7)
    net.eval()
    assert net(x[:1]).shape == (1, 7)  # BatchNorm in eval mode handles one sample
    assert (net.net_name, net.n_inputs, net.n_outputs) == (name, 10, 7)


def test_defaults_per_model():
    assert default_hyperparameters("mlp", "rverdict") == (3, 150)
    assert default_hyperparameters("mlp", "verdict") == (3, 150)
    assert default_hyperparameters("resnetreg", "rverdict") == (31, 128)
    assert default_hyperparameters("resnetreg", "verdict") == (28, 16)
    assert default_hyperparameters("resnetreg-st", "classic") == (28, 16)
    net = build_network("resnetreg", 10, 3, model_name="verdict")
    assert (net.depth, net.width) == (28, 16)
    assert net.blocks[0].main[0].out_features == 16


def test_layer_counting():
    mlp = build_network("mlp", 10, 7)
    assert count_linear_layers(mlp) == 4  # 3 hidden + output
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [150, 150, 150, 7]
    assert count_linear_layers(build_network("mlp", 10, 7, depth=5, width=20)) == 6
    # 31 = 3 stages × (9 main-path + 1 shortcut) + 1 output
    r = build_network("resnetreg", 10, 7, model_name="rverdict")
    assert r.n_stages == 3 and count_linear_layers(r) == 31
    # 28 = the same 3 stages counted without shortcuts (3 × 9 + 1)
    v = build_network("resnetreg", 10, 3, model_name="verdict")
    assert v.n_stages == 3 and count_linear_layers(v) == 31
    st = build_network("resnetreg-st", 10, 7, model_name="rverdict")
    assert count_linear_layers(st) == 31
    assert count_linear_layers(st, include_threshold=True) == 31 + 2 * 3  # two per dense block
    assert [resnet_stages(d) for d in (1, 11, 21, 28, 31, 41)] == [1, 1, 2, 3, 3, 4]
    assert build_network("resnetreg", 10, 7, depth=21, width=8).n_stages == 2


def test_block_structure():
    r = build_network("resnetreg", 10, 7, depth=11, width=8)
    kinds = [type(b).__name__ for b in r.blocks]
    assert kinds == ["DenseBlock", "IdentityBlock", "IdentityBlock"]
    dense = r.blocks[0]
    assert [type(m).__name__ for m in dense.main] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert [type(m).__name__ for m in dense.shortcut] == ["Linear", "BatchNorm1d"]
    assert dense.threshold is None
    assert build_network("resnetreg-st", 10, 7, depth=11, width=8).blocks[0].threshold is not None
    assert isinstance(r.output, torch.nn.Linear)  # nothing after the output layer


def test_soft_threshold_is_drsn_form():
    torch.manual_seed(0)
    st = SoftThreshold(6).eval()
    x = torch.randn(4, 6)
    y = st(x)
    a = x.abs()
    alpha = torch.sigmoid(st.gate(a))
    tau = alpha * a.mean(1, keepdim=True)
    torch.testing.assert_close(y, torch.sign(x) * torch.clamp(a - tau, min=0))
    assert (y.abs() <= a + 1e-7).all() and ((y == 0) | (torch.sign(y) == torch.sign(x))).all()
    assert (y == 0).any()  # small entries are shrunk to zero


def test_unknown_network_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown network 'cnn'.*mlp, resnetreg, resnetreg-st"):
        build_network("cnn", 10, 7)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        build_network("mlp", 10, 7, width=0)
    assert available_networks() == ("mlp", "resnetreg", "resnetreg-st")


def _randomise_batchnorm(net, seed=0):
    """Running statistics and affine parameters far from their defaults, so folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(0.2 + 2 * torch.rand(n, generator=g))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.3 * torch.randn(n, generator=g))


@pytest.mark.parametrize("name", ["mlp", "resnetreg", "resnetreg-st"])
def test_fused_for_inference_matches_eval_mode(name):
    from napari_rverdict.learn.nets import fused_for_inference

    torch.manual_seed(1)
    net = build_network(name, 10, 8, depth=31, width=128)
    _randomise_batchnorm(net)
    net.eval()
    x = torch.rand(2048, 10)
    fused = fused_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fused.modules())
    assert count_linear_layers(fused, include_threshold=True) == count_linear_layers(net, include_threshold=True)
    with torch.inference_mode():
        ref64, got64 = net.double()(x.double()), fused_for_inference(net).double()(x.double())
        net.float()
        ref32, got32 = net(x), fused(x)
    scale = ref64.abs().max()
    assert (got64 - ref64).abs().max() / scale < 1e-12  # the algebra is exact
    assert (got32 - ref32).abs().max() / scale <= 1e-6  # float32 rounding only
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == (name != "mlp")  # net untouched

"""The paper's image reverse network (dpm/nets/conv.py): shapes, readout layout and temporal basis, the
multi-scale convolution against independent computations, pathway switches, and the bound estimators on a
trained image model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from sklearn.datasets import load_digits

from dpm.core.bound import K_per_example
from dpm.core.gaussian import GaussianDiffusion
from dpm.nets.conv import ImageReverseNet, MultiScaleConvolution
from dpm.core.schedules import Schedule
from dpm.app.compose import compose

SMALL = dict(n_hidden_conv=6, n_layers_conv=2, n_hidden_dense_lower=16, n_hidden_dense_lower_output=2,
             n_layers_dense_lower=2, n_hidden_dense_upper=8, n_layers_dense_upper=2, n_temporal_basis=4)


def randomize_readout(net: ImageReverseNet, seed: int = 0) -> ImageReverseNet:
    torch.manual_seed(seed)
    with torch.no_grad():
        net.upper[-1].weight.normal_(0, 0.5)
        net.upper[-1].bias.normal_(0, 0.5)
    return net


@pytest.mark.parametrize("shape, n_outputs, overrides", [
    ((1, 8, 8), 2, {}),
    ((3, 8, 12), 2, {"n_scales": 3}),
    ((1, 16, 16), 1, {"n_layers_conv": 0}),  # dense only (the paper's MNIST)
    ((2, 4, 4), 2, {"n_hidden_dense_lower": 0}),  # convolution only
    ((1, 8, 8), 2, {"time_input": True, "conv_activation": "softplus", "dense_activation": "tanh"}),
])
def test_output_shape_and_zero_readout(shape, n_outputs, overrides):
    T = 30
    net = ImageReverseNet(shape, n_outputs, T, **{**SMALL, **overrides})
    x, t = torch.randn(5, *shape), torch.tensor([1, 2, 15, 29, 30])
    out = net(x, t)
    assert out.shape == (5, n_outputs, *shape)
    assert bool((out == 0).all())  # zero_readout: the reverse kernel starts as the forward kernel's form
    out = randomize_readout(net)(x, t)
    assert out.std() > 0.1
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_readout_layout_and_partition_of_unity():
    """Channel c*M*J + m*J + j of the last per-pixel layer is coefficient j of output m, colour c (the released
    layout). Equal coefficients over j read out to that value at every t, because the bumps sum to 1."""
    C, M, J, T = 3, 2, 5, 100
    net = ImageReverseNet((C, 4, 4), M, T, **{**SMALL, "n_temporal_basis": J})
    with torch.no_grad():
        net.upper[-1].bias.zero_()
        net.upper[-1].bias[1 * M * J + 0 * J: 1 * M * J + 1 * J] = 0.7  # colour 1, output 0, every j
    t = torch.arange(1, T + 1)
    out = net(torch.randn(T, C, 4, 4), t)  # [T, M, C, 4, 4]
    assert torch.allclose(out[:, 0, 1], torch.full_like(out[:, 0, 1], 0.7), atol=1e-6)
    out[:, 0, 1] = 0
    assert bool((out == 0).all())
    # one bump alone follows g_j(t): largest at its own centre
    with torch.no_grad():
        net.upper[-1].bias.zero_()
        net.upper[-1].bias[0 * M * J + 1 * J + 2] = 1.0  # colour 0, output 1, bump j = 2
    z = net(torch.randn(T, C, 4, 4), t)[:, 1, 0, 0, 0]
    assert torch.allclose(z, net.temporal.basis[:, 2], atol=1e-6)
    assert abs(z.argmax().item() + 1 - (1 + (T - 1) * 2 / (J - 1))) <= 1


def test_multiscale_by_hand():
    """Two scales with identity kernels: (x + its 2x2 block means, each repeated over its block) / 2."""
    layer = MultiScaleConvolution(1, 1, n_scales=2, activation="relu")
    with torch.no_grad():
        for conv in layer.convs:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
    x = torch.arange(16.0).view(1, 1, 4, 4)  # non-negative, so the ReLU is the identity
    block_means = torch.tensor([[2.5, 2.5, 4.5, 4.5],
                                [2.5, 2.5, 4.5, 4.5],
                                [10.5, 10.5, 12.5, 12.5],
                                [10.5, 10.5, 12.5, 12.5]])
    assert torch.allclose(layer(x)[0, 0], (x[0, 0] + block_means) / 2)
    # a constant image is a fixed point of pooling and upsampling
    assert torch.allclose(layer(torch.full((1, 1, 8, 8), 3.0)), torch.full((1, 1, 8, 8), 3.0))


@pytest.mark.parametrize("per_scale_activation", [True, False])
def test_multiscale_matches_direct_computation(per_scale_activation):
    """sum_s upsample_{2^s}(conv_s(avg_pool_{2^s}(x))) / n_scales, each scale through F.interpolate."""
    torch.manual_seed(0)
    n_scales = 3
    layer = MultiScaleConvolution(2, 5, n_scales=n_scales, activation="tanh",
                                  per_scale_activation=per_scale_activation)
    with torch.no_grad():
        for conv in layer.convs:
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.5)
    x = torch.randn(3, 2, 8, 16)
    act = torch.tanh if per_scale_activation else (lambda y: y)
    total = sum(F.interpolate(act(layer.convs[s](F.avg_pool2d(x, 2**s))), scale_factor=2**s, mode="nearest")
                for s in range(n_scales)) / n_scales
    expected = total if per_scale_activation else torch.tanh(total)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_more_scales_widen_the_receptive_field():
    """One 3x3 layer at one scale sees a 3x3 neighbourhood; with 3 scales, a far pixel in the same 4x4 block."""
    def sensitivity(n_scales: int) -> float:
        torch.manual_seed(0)
        net = randomize_readout(ImageReverseNet((1, 8, 8), 2, 10, **{**SMALL, "n_layers_conv": 1,
                                                                      "n_hidden_dense_lower": 0,
                                                                      "n_scales": n_scales}))
        x = torch.randn(1, 1, 8, 8, requires_grad=True)
        net(x, torch.tensor([5]))[0, :, 0, 0, 0].sum().backward()
        return x.grad[0, 0, 3, 3].abs().item()

    assert sensitivity(1) == 0.0
    assert sensitivity(3) > 0.0


def test_dense_pathway_depth_and_reach():
    """The dense pathway has n_layers_dense_lower layers (not n_layers_conv, the released bug), a nonlinearity
    after its output layer too, and it sees the whole image."""
    net = ImageReverseNet((1, 8, 8), 2, 10, **{**SMALL, "n_layers_conv": 0, "n_layers_dense_lower": 3})
    linears = [m for m in net.dense if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and not isinstance(net.dense[-1], torch.nn.Linear)
    randomize_readout(net)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    net(x, torch.tensor([5]))[0, :, 0, 0, 0].sum().backward()
    assert x.grad[0, 0, 7, 7].abs().item() > 0


def test_bad_settings_fail_early_with_the_key():
    with pytest.raises(ValueError, match=r"n_scales=3 .*divisible by 2\^\(n_scales-1\) = 4.*6x8"):
        ImageReverseNet((1, 6, 8), 2, 10, **{**SMALL, "n_scales": 3})
    with pytest.raises(ValueError, match="n_scales=2"):
        MultiScaleConvolution(1, 1, n_scales=2)(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match="both pathways are off"):
        ImageReverseNet((1, 8, 8), 2, 10, **{**SMALL, "n_layers_conv": 0, "n_hidden_dense_lower": 0})
    with pytest.raises(ValueError, match="images"):
        ImageReverseNet((64,), 2, 10)
    with pytest.raises(ValueError, match="activation"):
        ImageReverseNet((1, 8, 8), 2, 10, **{**SMALL, "activation": "swish"})


# experiment -> (image shape of its data set's default config, T, optimizer, batch size, parameters in millions)
PRESETS = {
    "mnist": ((1, 28, 28), 1000, "RMSprop", 512, 1.69),
    "cifar10": ((3, 32, 32), 1000, "RMSprop", 200, 12.69),
    "dead_leaves": ((1, 32, 32), 1000, "RMSprop", 512, None),
    "bark": ((1, 32, 32), 500, "RMSprop", 512, None),
    "digits_cpu": ((1, 8, 8), 1000, None, None, 0.61),
    "dead_leaves_cpu": ((1, 16, 16), 1000, None, None, 0.90),
}


@pytest.mark.parametrize("name", PRESETS)
def test_image_presets_pin_the_paper_settings_and_build(name):
    shape, T, optimizer, batch_size, millions = PRESETS[name]
    cfg = compose([f"experiment={name}"])
    assert cfg.T == T and cfg.dataset._target_.endswith("DataModule")
    if optimizer is not None:  # the released RMSprop and lr decay (docs/paper.md §5.4)
        assert cfg.optimizer._target_.endswith(optimizer) and cfg.optimizer.lr == 1e-3
        assert cfg.lr_scheduler._target_.endswith("released_lr_decay") and cfg.dataset.batch_size == batch_size
    if name == "dead_leaves_cpu":
        assert cfg.dataset.image_size == shape[-1]
    assert cfg.trainer.max_steps % cfg.trainer.val_check_interval == 0  # the last weights land in last.ckpt
    net = instantiate(cfg.net, data_shape=shape, n_outputs=2, T=cfg.T)
    if millions is not None:
        assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - millions) < 0.01
    assert net(torch.randn(2, *shape), torch.tensor([2, T])).shape == (2, 2, *shape)


def test_exact_and_mc_estimators_agree_on_a_trained_image_model():
    """Train the network briefly on the 8x8 digits (dequantized, unit variance), then compare the exact bound
    (all T - 1 terms) with the stratified Monte-Carlo one on the same examples: their per-example difference
    has mean 0 within its standard error, and training moved K well above L_null."""
    T, n_train, n_test = 100, 1400, 200
    torch.manual_seed(0)
    X = torch.from_numpy(load_digits().images.astype(np.float32))[:, None]  # [1797, 1, 8, 8], levels 0..16
    shift = X[:n_train].mean()
    scale = (X[:n_train] - shift).pow(2).mean().sqrt()
    X = (X - shift) / scale
    dequantize = lambda x: x + (torch.rand_like(x) - 0.5) / scale  # noqa: E731 - one grey level wide
    diffusion = GaussianDiffusion(Schedule("sd2015", T))
    net = ImageReverseNet((1, 8, 8), 2, T, n_hidden_conv=8, n_layers_conv=2, n_hidden_dense_lower=64,
                          n_layers_dense_lower=2, n_hidden_dense_upper=16)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(60):
        x0 = dequantize(X[torch.randint(0, n_train, (128,))])
        loss = -(K_per_example(diffusion, net, x0, "mc", 1) - diffusion.L_null(x0)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        x0 = dequantize(X[-n_test:])
        gain = (K_per_example(diffusion, net, x0, "exact") - diffusion.L_null(x0)) / (64 * np.log(2))
        mc = (K_per_example(diffusion, net, x0, "mc", 8) - diffusion.L_null(x0)) / (64 * np.log(2))
    diff = gain - mc
    assert abs(diff.mean()) < 4 * diff.std() / n_test**0.5
    assert gain.mean() > 0.5  # bits/pixel above the isotropic Gaussian: the model really is trained

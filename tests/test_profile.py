"""python -m dpm.bench --profile at tiny sizes: the operator counts of one training step, split by part, for the
module and for the plain loop of the same network and loss (no speed is asserted)."""

import pytest

from dpm.bench.cli import format_report, main
from dpm.bench.profile import PARTS

TINY_CONV = ["net.n_hidden_conv=4", "net.n_layers_conv=1", "net.n_hidden_dense_lower=8", "net.n_layers_dense_lower=2",
             "net.n_hidden_dense_lower_output=1", "net.n_hidden_dense_upper=4", "net.n_layers_dense_upper=1"]
# what a step may create from Python numbers or copy from the host: none of it belongs in the module's loss
CREATION = ("aten::full", "aten::ones_like", "aten::zeros", "aten::zeros_like", "aten::ones", "aten::arange",
            "aten::lift_fresh", "aten::scalar_tensor", "aten::_to_copy", "aten::copy_")


def ops_in(counts: dict, part: str) -> dict:
    return {k.split(" ", 1)[1]: v for k, v in counts["operators"].items() if k.startswith(part + " ")}


@pytest.mark.parametrize("preset, extra", [
    ("digits", ["dataset.n_train=64", "dataset.n_val=16", "dataset.n_test=16", *TINY_CONV]),
    ("heartbeat", ["dataset.n_train=64"]),  # binomial diffusion
])
def test_profile_splits_the_step_and_the_module_draws_once(preset, extra, capsys):
    result = main(["--preset", preset, "--profile", "--warmup", "2", "--profile-steps", "3", "--profile-timed", "0",
                   "--batch", "8", "--no-progress-bar", "T=20", *extra])
    p = result["profile"]
    for side in ("module", "plain"):
        c = p[side]
        assert sum(c[part] for part in PARTS) == c["total"] == sum(c["operators"].values())
        assert c["total"] in c["totals_of_profiled_steps"] and len(c["totals_of_profiled_steps"]) == 3
        assert c["net_forward"] > 0 and c["net_backward"] > 0 and c["optimizer"] > 0 and c["loss_forward"] > 0
    module, plain = p["module"], p["plain"]
    # the same network: its forward and backward run the same operators on both sides
    for part in ("net_forward", "net_backward"):
        assert ops_in(module, part) == ops_in(plain, part)
    assert p["module_else"] == module["total"] - module["net_forward"] - module["net_backward"] - module["optimizer"]
    # the module's loss: one draw (normals) for t, dequantisation and noise, one gather of the tables at t,
    # no tensor made from Python numbers and no dtype round trips: the one `to` is t's float -> long (binomial:
    # and the bits of x_t, a comparison made float)
    loss = ops_in(module, "loss_forward")
    draws = {k: v for k, v in loss.items() if k in ("aten::randn", "aten::rand", "aten::randint", "aten::bernoulli",
                                                     "aten::normal", "aten::uniform_", "aten::normal_")}
    assert draws == {"aten::randn": 1}
    assert loss.get("aten::index") == 1 and loss.get("aten::to") == (1 if preset == "digits" else 2)
    assert not set(loss) & set(CREATION)
    # the plain loop draws t, noise and the batch's indices separately (and dequantisation for images)
    plain_draws = sum(v for k, v in ops_in(plain, "loss_forward").items() if k.startswith(("aten::rand", "aten::bern")))
    assert plain_draws >= 2
    printed = capsys.readouterr().out
    assert "operators per training step" in printed and "net_forward" in printed
    assert format_report(result).count("\n") >= len(PARTS) + 2

"""python -m dpm.bench at tiny sizes on the CPU: it produces its numbers (speeds are not asserted)."""

import json
import math

import pytest

from dpm.bench.harness import format_report, main, parse_args

TINY_CONV = ["net.n_hidden_conv=4", "net.n_layers_conv=1", "net.n_hidden_dense_lower=8", "net.n_layers_dense_lower=2",
             "net.n_hidden_dense_lower_output=1", "net.n_hidden_dense_upper=4", "net.n_layers_dense_upper=1"]


def check_rates(section, steps, images_per_step):
    """The rates are the counted work over the timed seconds, and the ratio is the one of those rates."""
    assert section["steps_per_side"] == steps and section["images_per_step"] == images_per_step
    for key in ("module_images_per_s", "plain_images_per_s", "ratio", "ratio_min", "ratio_max"):
        assert math.isfinite(section[key]) and section[key] > 0, key
    images = steps * images_per_step
    assert section["module_images_per_s"] == pytest.approx(images / section["module_s"])
    assert section["plain_images_per_s"] == pytest.approx(images / section["plain_s"])
    assert section["ratio"] == pytest.approx(section["module_images_per_s"] / section["plain_images_per_s"])
    low, high = section["ratio_min"] * (1 - 1e-9), section["ratio_max"] * (1 + 1e-9)
    assert low <= section["ratio"] <= high and low <= section["ratio_median"] <= high


def report_row(section) -> str:
    """The row format_report prints for a section, from the section's own numbers."""
    return (f"{section['module_images_per_s']:>14,.0f}{section['plain_images_per_s']:>14,.0f}{section['ratio']:>10.3f}"
            f"   {section['ratio_median']:.3f} ({section['ratio_min']:.3f}..{section['ratio_max']:.3f})")


def test_swiss_roll_bench_writes_its_numbers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = main(["--preset", "swiss_roll", "--steps", "4", "--rounds", "2", "--warmup", "1", "--batch", "32",
                   "--forward-steps", "2", "--forward-batch", "16", "--bound-n", "12", "--bound-batch", "5",
                   "--floor-steps", "20", "--no-progress-bar", "--json", str(out), "T=6", "dataset.n_train=200"])
    assert json.loads(out.read_text()) == result
    assert result["device_type"] == "cpu" and result["precision"] == "32-true" and result["T"] == 6
    check_rates(result["train"], 4, 32)
    check_rates(result["forward"], 2, 16 * result["val_n_t"])  # every image at val_n_t times
    bound = result["bound"]
    assert bound["complete"] and bound["terms_done"] == 12 * 5  # n x (T - 1) KL terms
    assert bound["seconds_for_n"] == pytest.approx(bound["seconds"])  # measured, not extrapolated
    assert bound["network_passes_per_s"] == pytest.approx(bound["terms_done"] / bound["seconds"])
    assert result["floor"]["steps"] == 20 and result["floor"]["lightning_s_per_step"] > 0
    assert result["floor"]["plain_s_per_step"] > 0
    printed = capsys.readouterr().out
    assert f"train images/s    {report_row(result['train'])}" in printed
    assert f"forward images/s  {report_row(result['forward'])}" in printed
    assert "exact bound, 12 images at T = 6 (batch 5, " in printed
    assert f"{bound['seconds_for_n']:.1f} s (measured)" in printed
    assert f"Lightning's loop alone (a one-parameter module, no logger, bar or checkpoints; 20 steps): " \
           f"{result['floor']['lightning_s_per_step'] * 1e6:.0f} us per step" in printed


def test_cifar10_preset_runs_on_random_images_and_extrapolates_the_bound():
    result = main(["--preset", "cifar10", "--steps", "2", "--rounds", "1", "--warmup", "1", "--batch", "4",
                   "--no-forward", "--bound-n", "40", "--bound-batch", "4", "--bound-max-seconds", "1e-9",
                   "--floor-steps", "0", "--no-progress-bar", "--no-logger", "T=5", "dataset.n_train=64", "dataset.n_val=16",
                   "dataset.n_test=16", *TINY_CONV])
    check_rates(result["train"], 2, 4)
    assert "forward" not in result
    bound = result["bound"]
    assert not bound["complete"] and 0 < bound["terms_done"] < 40 * 4
    assert bound["seconds_for_n"] == pytest.approx(bound["seconds"] * 40 * 4 / bound["terms_done"])
    assert "extrapolated" in format_report(result)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        parse_args(["--preset", "nosuchpreset"])
    with pytest.raises(SystemExit):
        parse_args(["--steps", "2", "--rounds", "5"])

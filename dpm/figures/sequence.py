"""Binary sequences (the heartbeat): training data beside model samples, and the forward and reverse chains."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator

from dpm.figures.save import plt, save
from dpm.model.sampling import sample


def colours(classes: int | None) -> dict:
    """imshow's colour settings for sequences of `classes` states: bits (or real values in [0, 1]) grey, black for 1;
    C > 2 classes one colour each; NaN (an unknown bin) light grey."""
    if classes is None or classes == 2:
        cmap, vmax = plt.get_cmap("gray_r"), 1
    else:
        cmap, vmax = plt.get_cmap("viridis", classes), classes - 1
    return {"cmap": cmap.with_extremes(bad="0.85"), "vmin": 0, "vmax": vmax}


@torch.no_grad()
def forward_trajectory(diffusion, x0: torch.Tensor, times: list[int], generator: torch.Generator | None = None
                       ) -> dict[int, torch.Tensor]:
    """One run of the forward chain x_t ~ q(x_t | x_{t-1}) for t = 1..T from x0 [N, *D], keeping x_t at `times`."""
    x, kept = x0, {0: x0} if 0 in times else {}
    for step in range(1, diffusion.T + 1):
        t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        x = diffusion.draw(diffusion.forward_kernel(x, t), generator)
        if step in times:
            kept[step] = x
    return kept


def sequence(module, dm, path: Path, seed: int = 0, n: int = 500, n_show: int = 20, n_times: int = 21,
             progress: bool = False) -> Path:
    """Four panels: training sequences; samples of the model (titled with the fraction of the n samples that are
    one of the data set's patterns where it has them (the heartbeat), else their mean beside the data's); one
    forward trajectory x_0 -> x_T; one reverse trajectory x_T -> x_0. Rows are sequences (or times), columns are
    bins; bits black for 1, C > 2 classes one colour each (dm.kind.classes)."""
    diffusion, T = module.diffusion, module.diffusion.T
    times = sorted({round(T * k / (n_times - 1)) for k in range(n_times)})
    g = torch.Generator(device=module.device).manual_seed(seed)
    train = dm.splits["train"][:n_show].to(module.device)
    samples, reverse = sample(module, (n, *dm.data_shape), g, "sampling", progress, keep=tuple(times))
    with torch.no_grad():
        forward = forward_trajectory(diffusion, train[:1], times, g)
    if dm.patterns is not None:  # how many samples are one of the patterns the data are drawn from
        valid = (samples.cpu()[:, None] == dm.patterns[None]).flatten(2).all(2).any(1).float().mean().item()
        about = f"{100 * valid:.1f}% of {n} are training patterns"
    elif dm.kind.classes and dm.kind.classes > 2:  # class frequencies of the samples beside the data's
        freq = lambda x: ", ".join(f"{v:.2f}" for v in torch.bincount(  # noqa: E731
            x.long().flatten().cpu(), minlength=dm.kind.classes)[:dm.kind.classes].div(x.numel()).tolist())
        about = f"classes {freq(samples)}; data {freq(dm.splits['train'])}"
    else:
        about = f"mean activity {samples.mean().item():.3f}, data {dm.splits['train'].mean().item():.3f}"
    panels = [
        (train.cpu(), "training sequences", "example"),
        (samples[:n_show].cpu(), f"samples ({about})", "sample"),
        (torch.cat([forward[t] for t in times]).cpu(), "forward diffusion of one sequence", "t"),
        (torch.cat([reverse[t][:1] for t in reversed(times)]).cpu(), "reverse diffusion of one sample", "t"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 5))
    for ax, (image, title, ylabel) in zip(axes, panels):
        ax.imshow(image, aspect="auto", interpolation="nearest", **colours(dm.kind.classes))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("bin")
        ax.set_ylabel(ylabel)
        if ylabel == "t":  # rows are the kept times, x_0 first (forward) or x_T first (reverse)
            ticks = list(range(0, len(times), max(1, len(times) // 5)))
            labels = times if "forward" in title else list(reversed(times))
            ax.set_yticks(ticks, [str(labels[i]) for i in ticks])
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{dm.name}: {diffusion.title}, T = {T}")
    return save(fig, path)

"""How long dataset=folder takes to decode a folder of PNGs, and an epoch over it against a built-in image set of the
same shape held as a tensor (the README's "Bring your own data and code"). Run it alone on the machine:

    python scripts/folder_bench.py [--n 10000] [--size 32] [--dir /tmp/dpm_folder_bench]

It writes n random grey size x size PNGs with PIL (once; kept in --dir), then times (1) decoding them into the
data module's tensor, (2) one epoch of training batches (batch 256) from it, (3) the same epoch from the built-in
random 8-bit images of the same shape, and (4) one epoch of training steps through Lightning's Trainer (folder preset: conv_mnist, T = 1000) on each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dpm.app.build import build
from dpm.app.compose import compose
from dpm.data.folder import FolderDataModule
from dpm.data.random_images import RandomImages


def write_pngs(folder: Path, n: int, size: int) -> None:
    if len(list(folder.glob("*.png"))) == n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def loader_epoch(dm) -> float:
    start = time.perf_counter()
    for x0, _ in dm.train_dataloader():
        x0.sum()
    return time.perf_counter() - start


def training_epoch(folder: Path, builtin: bool) -> float:
    """Seconds for one epoch of optimizer steps through Lightning's Trainer (no validation, no checkpoint), on the
    folder's images or on built-in random images of the same shape and number."""
    import lightning as L

    cfg = compose(["dataset=folder", f"dataset.path={folder}", "dataset.n_val=100", "dataset.n_test=100",
                   "trainer.accelerator=cpu"])
    dm, module = build(cfg)
    if builtin:
        dm = RandomImages(shape=dm.data_shape, n_train=len(dm.splits["train"]), n_val=100, n_test=100,
                          batch_size=dm.batch_size)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_model_summary=False, use_distributed_sampler=False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dpm_folder_bench"))
    parser.add_argument("--no-training", action="store_true", help="only decoding and the loader epochs")
    args = parser.parse_args()
    folder = args.dir / f"png_{args.n}_{args.size}"
    write_pngs(folder, args.n, args.size)
    start = time.perf_counter()
    dm = FolderDataModule(path=str(folder), n_val=100, n_test=100)
    dm.setup()
    decode_s = time.perf_counter() - start
    builtin = RandomImages(shape=dm.data_shape, n_train=len(dm.splits["train"]), n_val=100, n_test=100)
    builtin.setup()
    print(f"decoding {args.n:,} {args.size}x{args.size} PNGs: {decode_s:.2f} s ({args.n / decode_s:,.0f} images/s)")
    print(f"loader epoch, folder:   {loader_epoch(dm):.3f} s")
    print(f"loader epoch, built-in: {loader_epoch(builtin):.3f} s")
    if not args.no_training:
        print(f"training epoch, folder:   {training_epoch(folder, builtin=False):.1f} s")
        print(f"training epoch, built-in: {training_epoch(folder, builtin=True):.1f} s")


if __name__ == "__main__":
    main()

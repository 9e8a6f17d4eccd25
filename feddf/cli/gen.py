"""`feddf gen`: sample a GAN into a deterministic, resumable HDF5 cache with per-class coverage stats.

    feddf gen --generator biggan-deep-128 --random-weights --n 8 --batch-size 4 --out /tmp/b.h5

Re-running the same command after an interruption (even kill -9) continues from the last committed block; under
`torchrun --nproc-per-node K -m feddf gen ...` each rank makes its own shard and rank 0 joins them. docs/generators.md
has the generators and their weights, docs/cache-format.md the file layout.
"""
from __future__ import annotations

import json

import click

GENERATOR_HELP = ("biggan-deep-128|256|512, dcgan, dcgan-fashion-mnist, torchscript (see docs/generators.md)")


def _summary_lines(s: dict) -> list[str]:
    if s["already_complete"]:
        head = f"{s['out']}: already complete ({s['n']} images), nothing to do"
    else:
        resumed = f" (resumed at {s['resumed_from']})" if s["resumed_from"] else ""
        head = (f"{s['out']}: {s['generated']} images{resumed} in {s['wall_s']:.1f} s = {s['img_per_s']:.1f} img/s "
                f"on {s['device']}" + (f" (--fast, {s['dtype']}, compile {s['compile']})" if s.get("mode") == "fast"
                                         else ""))
    lines = [head]
    if s.get("selection"):
        sel = s["selection"]
        lines.append(f"  filter: kept {sel['kept']} of {sel['drawn']} draws; per class {sel['kept_per_class']}")
    return lines + [f"  {s['n']} images, {s['file_bytes'] / 2**20:.2f} MiB on disk, {s['bytes_per_image']:.0f} "
                  "bytes/image"]


@click.command("gen", context_settings={"show_default": True})
@click.option("--generator", "generator", required=True, metavar="NAME", help=GENERATOR_HELP)
@click.option("--n", "--num-images", "n", required=True, type=int,
              help="Number of images in the cache (under torchrun write --num-images: torchrun's own parser takes "
                   "--n for an abbreviation of its options).")
@click.option("--out", default=None, metavar="PATH", help="Cache file [default: cache/<generator>-<R>px-<n>.h5].")
@click.option("--resolution", type=int, default=None,
              help="Output size R (antialiased resize) [default: 32; 28 for dcgan-fashion-mnist].")
@click.option("--truncation", type=float, default=None, help="BigGAN truncation in (0, 1] [default: 0.4].")
@click.option("--classes", default=None, metavar="SPEC",
              help="all | ids/ranges e.g. 1,5,10-19 | @FILE of ids | cifar10 | cifar100 (BigGAN) [default: all].")
@click.option("--seed", type=int, default=0)
@click.option("--batch-size", type=int, default=None, help="Images per step [default: 16 for BigGAN on CPU, else 256].")
@click.option("--device", default="auto", help="auto, cpu, cuda, cuda:N.")
@click.option("--weights", default=None, metavar="DIR", help="BigGAN: folder with config.json + pytorch_model.bin.")
@click.option("--checkpoint", default=None, metavar="FILE", help="dcgan: netG state_dict; torchscript: the .pt file.")
@click.option("--random-weights", is_flag=True, help="Exact architecture, seeded random weights (tests/benchmarks).")
@click.option("--compression", type=click.Choice(["gzip", "none", "lzf"]), default="gzip",
              help="gzip: deflate level 1, readable by every HDF5 reader; none: fastest to write and stream; lzf: "
                   "readable by h5py only.")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Threads that compress and checksum chunks [default: one per CPU, at most 8]; the images are the "
                   "same for any N.")
@click.option("--labeler", default=None, metavar="RUN_OR_CKPT",
              help="Classifier (feddf train run folder or checkpoint) whose predictions go into the coverage stats.")
@click.option("--min-confidence", type=float, default=None, metavar="TAU",
              help="With --labeler: keep only draws the labeler predicts with confidence >= TAU (draws more).")
@click.option("--balance", is_flag=True,
              help="With --labeler: keep at most ceil(n / K) draws per predicted class (draws more).")
@click.option("--oversample", type=float, default=4.0,
              help="With --min-confidence/--balance: draw at most this many candidates per kept image.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Forward precision (bf16/fp16: CUDA) [default: fp32; bf16 with --fast on CUDA].")
@click.option("--fast", is_flag=True,
              help="Throughput mode: large fixed batches, cuDNN autotuning, SDPA attention, compiled forward (CUDA), "
                   "resize + uint8 on the device. Same indices and noise, but bytes may differ by rounding; a cache "
                   "made with --fast only resumes with --fast (docs/generators.md).")
@click.option("--compile", "compile_", type=click.Choice(["auto", "on", "graphs", "off"]), default="auto",
              help="--fast: torch.compile the step (auto: on CUDA only; graphs: + CUDA graphs); falls back to eager.")
@click.option("--chunk-images", type=int, default=None,
              help="Images per HDF5 chunk = per commit [default: about 1 MiB].")
@click.option("--z-dim", type=int, default=None, help="torchscript: noise size, if the module has no z_dim attribute.")
@click.option("--force", is_flag=True, help="Overwrite an existing cache (never a file that is not a cache).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line.")
def command(generator, n, out, resolution, truncation, classes, seed, batch_size, device, weights, checkpoint,
            random_weights, compression, workers, labeler, min_confidence, balance, oversample, dtype, fast, compile_,
            chunk_images, z_dim, force, quiet, as_json):
    """Sample a GAN into a deterministic, resumable HDF5 cache.

    \b
    Examples:
      feddf gen --generator biggan-deep-128 --weights ~/biggan-deep-128 --classes cifar10 --n 50000
      feddf gen --generator dcgan --checkpoint netG_epoch_24.pth --n 20000 --resolution 32
      feddf gen --generator biggan-deep-128 --random-weights --n 8 --batch-size 4 --out /tmp/b.h5
      feddf gen --generator biggan-deep-128 --weights ~/biggan-deep-128 --n 500000 --fast --device cuda
      feddf gen --generator dcgan-fashion-mnist --n 20000 --labeler runs/labeler --min-confidence 0.8 --balance
    """
    from feddf.api import gen

    summary = gen(generator=generator, n=n, out=out, resolution=resolution, truncation=truncation, classes=classes,
                  seed=seed, batch_size=batch_size, device=device, weights=weights, checkpoint=checkpoint,
                  random_weights=random_weights, compression=compression, workers=workers, labeler=labeler,
                  dtype=dtype, chunk_images=chunk_images, z_dim=z_dim, mode="fast" if fast else "bitwise",
                  compile=compile_, min_confidence=min_confidence, balance=balance,
                  oversample=oversample, force=force, progress=not quiet)
    if summary["rank"]:
        return  # rank 0 reports for the whole torchrun job
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        for line in _summary_lines(summary):
            click.echo(line)

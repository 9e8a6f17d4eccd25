"""`feddf gan-train`: train a DCGAN whose checkpoints `feddf gen --generator dcgan --checkpoint` loads.

    feddf gan-train --data fashion-mnist:test[:5000] --epochs 25 --out runs/dcgan-fmnist
"""
from __future__ import annotations

import click


@click.command("gan-train")
@click.option("--data", default="fashion-mnist:test[:5000]", show_default=True,
              help="Dataset spec (name[:split][[a:b]]) or a feddf cache (.h5) to train on.")
@click.option("--out", default="runs/dcgan", show_default=True, type=click.Path(file_okay=False),
              help="Run folder: netG_epoch_N.pth, netD_epoch_N.pth, checkpoint.pt, log.jsonl, samples.png.")
@click.option("--size", default=32, show_default=True, type=click.Choice(["32", "64"]),
              help="Generator output size: 32 (1x1 last layer variant) or 64 (pytorch/examples).")
@click.option("--nz", default=100, show_default=True, type=click.IntRange(1), help="Latent size.")
@click.option("--ngf", default=32, show_default=True, type=click.IntRange(1), help="Generator width.")
@click.option("--ndf", default=32, show_default=True, type=click.IntRange(1), help="Discriminator width.")
@click.option("--epochs", default=25, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=2e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--beta1", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", default=None, type=click.IntRange(1), help="Train on the first N images only.")
@click.option("--conditional", is_flag=True,
              help="Class-conditional G and D (needs labelled data); `feddf gen --classes` then picks the classes.")
@click.option("--resume", is_flag=True, help="Continue the run in --out after its last finished epoch.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def command(data, out, size, nz, ngf, ndf, epochs, batch_size, lr, beta1, seed, limit, conditional, resume, quiet):
    """Train a DCGAN (pytorch/examples recipe) and write netG checkpoints for `feddf gen`."""
    from feddf.generators.train_dcgan import GanTrainConfig, train

    cfg = GanTrainConfig(data=data, out=out, size=int(size), nz=nz, ngf=ngf, ndf=ndf, epochs=epochs,
                         batch_size=batch_size, lr=lr, beta1=beta1, seed=seed, limit=limit,
                         conditional=conditional)
    path = train(cfg, resume=resume, progress=not quiet)
    click.echo(f"generator: {path}\nsamples:   {path.parent / 'samples.png'}\n"
               f"sample it: feddf gen --generator dcgan --checkpoint {path} --n 1000")

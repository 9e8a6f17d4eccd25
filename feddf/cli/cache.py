"""`feddf cache`: import real transfer sets into the cache format; inspect, verify and preview caches.

    feddf cache import fashion-mnist:test[:500] --out cache/fm500.h5 && feddf cache verify cache/fm500.h5
"""
from __future__ import annotations

import click


@click.group("cache")
def command() -> None:
    """Import, inspect, verify and preview HDF5 image caches (the distillation transfer sets).

    \b
    Examples:
      feddf cache import cifar100 --out cache/cifar100-train.h5
      feddf cache import fashion-mnist:test[:5000] --out cache/fmnist-public.h5 --resolution 32
      feddf cache info cache/cifar100-train.h5 --json
      feddf cache verify cache/cifar100-train.h5
      feddf cache preview cache/cifar100-train.h5 --out grid.png
    """


@command.command("import")
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Cache file to write (.h5).")
@click.option("--split", metavar="SPLIT", help="Dataset split (train, test, unlabeled, train+unlabeled, val); may "
              "also be given in SOURCE as name:split[a:b].")
@click.option("--resolution", type=click.IntRange(4, 1024), metavar="R", help="Resize to R x R (bilinear, "
              "antialiased; folders: shorter side to R + centre crop) [default: the source's size].")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Import only the first N images.")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True,
              help="HDF5 compression: none (uncompressed chunks stream ~3x faster), gzip (deflate, readable "
                   "everywhere) or lzf (readable by h5py only).")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Threads that compress and checksum chunks [default: one per CPU, at most 8]; the file is the "
                   "same for any N.")
@click.option("--force", is_flag=True, help="Replace an existing cache made with a different config.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def import_cmd(source, out, split, resolution, limit, compression, workers, force, quiet) -> None:
    """Import SOURCE into a cache: cifar10, cifar100, stl10, imagenet32, fashion-mnist (with split/slice, e.g.
    fashion-mnist:test[:5000]), folder:PATH (class sub-folders or flat) or npz:PATH (x/images + y/labels).

    Labels are stored for audits only; distillation never uses them. An interrupted import resumes when re-run with
    the same arguments; an existing cache is never overwritten without --force.
    """
    from feddf.data.importers import import_source
    from feddf.cache.reader import open_cache

    path = import_source(source, out, split=split, resolution=resolution, limit=limit, compression=compression,
                         force=force, progress=not quiet, workers=workers)
    info = open_cache(path)
    click.echo(f"wrote {path}: {info.n} images {info.channels}x{info.resolution}x{info.resolution} from "
               f"{info.source} ({info.file_size / 1e6:.1f} MB)")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


@command.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def info_cmd(path, as_json) -> None:
    """Format version, provenance, N, shapes, per-class counts, file size and bytes per image of a cache."""
    import json

    from feddf.cache.reader import open_cache, writer_alive

    info = open_cache(path)
    alive = not info.complete and writer_alive(path)
    if as_json:
        click.echo(json.dumps({**info.to_dict(), "writer_running": alive}, indent=2, sort_keys=True, default=str))
        return
    a = info.attrs
    status = "complete" if info.complete else ("being written" if alive else
                                               "incomplete (interrupted: rerun the same command to resume it)")
    lines = [
        f"{info.path}",
        f"  format        {a.get('format')} v{info.format_version} ({info.kind or '?'}), {status}",
        f"  source        {info.source or '?'}" + (f" (seed {a['seed']})" if "seed" in a else ""),
        f"  images        {info.n} committed of {info.capacity}, uint8 {info.channels}x{info.resolution}x"
        f"{info.resolution}, chunks of {info.chunk_len}",
        f"  storage       {_human(info.file_size)}, {info.bytes_per_image:.0f} B/image, compression "
        f"{info.compression or 'none'}, fletcher32 {'yes' if info.fletcher32 else 'NO'}"
        + (", virtual (shards)" if info.virtual else ""),
        f"  created       {a.get('created', '?')} by feddf {a.get('package_version', '?')}",
    ]
    for title, counts, names in (("labels", info.label_counts, info.label_names),
                                 ("targets", info.target_counts, info.target_names),
                                 ("labeler", info.labeler_counts, info.target_names)):
        if counts is None or counts.size == 0:
            continue
        nz = int((counts > 0).sum())
        lines.append(f"  {title:<13} {counts.size} classes, {nz} present, {int(counts.sum())} labelled")
        order = sorted(range(counts.size), key=lambda k: -counts[k])[:10]
        shown = ", ".join(f"{names[k] if names and k < len(names) else k}: {int(counts[k])}" for k in order)
        lines.append(f"  {'':<13} {shown}{' ...' if counts.size > 10 else ''}")
    click.echo("\n".join(lines))


@command.command("verify")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def verify_cmd(path, as_json, quiet) -> None:
    """Check format/version, shapes/dtypes, committed count, every chunk's fletcher32 checksum, label ranges and
    coverage counts. Exit 0 when sound; exit 1 with the list of problems otherwise."""
    import json

    from feddf.cache.verify import verify_cache

    rep = verify_cache(path, progress=not quiet)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo("\n".join(rep.lines()), err=not rep.ok)
    if not rep.ok:
        raise SystemExit(1)


@command.command("preview")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--per-class", type=click.IntRange(1, 64), default=8, show_default=True, help="Images per class row.")
@click.option("--max-classes", type=click.IntRange(1, 200), default=20, show_default=True,
              help="Rows; with more classes the most frequent are shown.")
@click.option("--by", type=click.Choice(["labels", "targets"]), default="labels", show_default=True,
              help="Group by conditioning labels or by target classes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-class sample.")
def preview_cmd(path, out, per_class, max_classes, by, seed) -> None:
    """Write an image grid of a cache, one row per class."""
    from feddf.cache.preview import preview
    from feddf.utils import check_can_create

    check_can_create(out, file=True)
    res = preview(path, out, per_class=per_class, max_classes=max_classes, by=by, seed=seed)
    click.echo(f"wrote {res['out']}: {res['rows']}x{res['cols']} grid")

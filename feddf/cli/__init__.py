"""The `feddf` command line: one click group; each sub-command lives in its own module of this package.

    feddf --help

A module in `feddf/cli/` that defines a module-level `command` (a click.Command or Group) is registered under that
command's name; modules stay cheap to import (torch and friends are imported inside the command functions), so
`feddf --help` is fast.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

import click

from feddf import __version__
from feddf.errors import FeddfError


def user_error(e: BaseException) -> str | None:
    """The one-line message for a user-facing failure, or None for a bug (which keeps its traceback).

    User-facing: FeddfError (library code's own checks) and OSError (paths that cannot be created, read or written,
    a full disk, files h5py cannot open), wherever they are raised; everything else is a bug."""
    if isinstance(e, FeddfError):
        return str(e)
    if isinstance(e, OSError):
        what = e.strerror or str(e) or type(e).__name__
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        msg = f"{where}: {what}" if where else what
        return " ".join(msg.split())  # h5py's messages can span lines
    return None


class FeddfGroup(click.Group):
    """One place that turns every user-facing failure into one line: `Error: ...`, exit 1, no traceback.
    FEDDF_DEBUG=1 re-raises instead, with the full traceback (for bug reports)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs by user_error()
            msg = user_error(e)
            if msg is None or os.environ.get("FEDDF_DEBUG", "") not in ("", "0"):
                raise
            raise click.ClickException(msg) from None


@click.group(cls=FeddfGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="feddf")
def main() -> None:
    """FedDF ensemble distillation for federated learning, with synthetic transfer sets.

    \b
    Typical flow:
      feddf gen --generator dcgan-fashion-mnist --n 20000     # sample a GAN into an HDF5 cache
      feddf audit cache/dcgan-fashion-mnist-28px-20000.h5     # class coverage (+ FID) report
      feddf train --aggregator feddf --distill-source gan      # federated training with ensemble distillation
      feddf compare runs/A runs/B                              # accuracy-vs-round report
    """


def _register_commands() -> None:
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod.startswith("_"):
            continue
        cmd = getattr(importlib.import_module(f"{__name__}.{mod}"), "command", None)
        if isinstance(cmd, click.Command):
            main.add_command(cmd)


_register_commands()

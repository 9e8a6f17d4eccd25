"""The `feddf` command line: one click group; each sub-command lives in its own module of this package.

    feddf --help

A module in `feddf/cli/` that defines a module-level `command` (a click.Command or Group) is registered under that
command's name; modules stay cheap to import (torch and friends are imported inside the command functions), so
`feddf --help` is fast.
"""
from __future__ import annotations

import importlib
import pkgutil

import click

from feddf import __version__
from feddf.errors import FeddfError


class FeddfGroup(click.Group):
    """Turns library errors (`FeddfError`) into one-line user errors: `Error: ...`, exit 1, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FeddfError as e:
            raise click.ClickException(str(e)) from None


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

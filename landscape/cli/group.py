"""The `landscape` command group itself (its help lists every command with an example); commands attach to it
in their own modules."""
from __future__ import annotations

import click

from landscape import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="landscape")
def cli() -> None:
    """Loss-landscape and ablation analysis of image classifiers.

    \b
    landscape run --model vgg_bn --lrs 1e-3,2e-3,5e-4,1e-4   train one model per rate into HDF5
    landscape plot artifacts/vgg.h5 artifacts/vgg_bn.h5     draw loss envelopes and ranges
    landscape info artifacts/vgg_bn.h5                      summarise a run file
    landscape ablate run --all --preset quick               run the reports' ablation tables
    landscape ablate table --all --preset quick             regenerate their tables and figures
    landscape ablate figures 004 --preset quick             regenerate a report's figures
    landscape surface artifacts/vgg_bn.h5 --lr 1e-3         Li et al. loss surface around a snapshot
    landscape hessian artifacts/vgg_bn.h5 --lr all          Hessian eigenvalues, trace, density
    landscape measure artifacts/vgg_bn.h5 --lr 1e-3         flatness and sharpness measures of a snapshot
    landscape connect a.h5 b.h5 --align weights             loss barriers and paths between two models
    landscape ablate measure study_keskar_large_batch --preset cpu   a study's measures and verdicts
    landscape report artifacts/vgg.h5 artifacts/vgg_bn.h5   one interactive HTML page
    landscape export SURFACE.h5 --format vtk                a surface for ParaView (or csv, npz)
    """

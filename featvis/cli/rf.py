"""`featvis rf MODEL [LAYER ...] [--input-size 224] [--json]`: receptive fields, one row per layer;
`featvis rf MODEL LAYER --effective IMAGE... [-o erf.png]`: the effective field beside the theoretical one."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .._util.errors import FeatvisError
from .common import add_model_args, add_out_arg, check_figure_output, model_from_args, print_json

if TYPE_CHECKING:
    from ..receptive_field import ReceptiveField


LEGEND = ("r: field size, S: stride, P: padding, in input pixels (Araujo et al. 2019): unit i sees pixels "
          "S*i-P .. S*i-P+r-1; aligned: every path agrees on each unit's centre")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("rf", help="receptive fields of layers (theory), or a layer's effective field",
                                   description=f"One row per layer. {LEGEND}.")
    add_model_args(parser)
    parser.add_argument("layers", nargs="*", metavar="LAYER", help="layers to show, in this order (default: every layer)")
    parser.add_argument("--effective", nargs="+", metavar="IMAGE",
                        help="measure LAYER's effective field (Luo et al. 2016), averaged over these photos")
    add_out_arg(parser, required=False, what="with --effective: figure file (.png, .svg or .pdf)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.effective is not None:
        return _effective(args)
    from ..receptive_field import receptive_fields

    if args.out:
        raise FeatvisError("-o draws the effective field: add --effective IMAGE... (and exactly one LAYER)")
    model = model_from_args(args, pretrained=False)  # the theory needs no weights
    fields = receptive_fields(model, args.layers or None, args.input_size)
    if args.json:
        print_json([field.to_dict() for field in fields])
        return 0
    rows = [("layer", "r", "S", "P", "output", "aligned")] + [_row(field) for field in fields]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(LEGEND)
    unknown = [field for field in fields if field.unanalysed]
    for field in unknown:
        print(f"{field.layer}: not analysed: {'; '.join(field.unanalysed)}")
    if unknown:
        print("(describe your own layers with featvis.register_rule)")
    return 0


def _pair(pair: tuple[int, int] | None) -> str:
    if pair is None:
        return "?"
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _row(field: ReceptiveField) -> tuple[str, ...]:
    if field.stride == (0, 0):
        stride = "global" if field.is_global else "pooled"
    else:
        stride = _pair(field.stride)
    aligned = "?" if field.unanalysed else "yes" if field.aligned else "NO"
    return (field.layer, _pair(field.size), stride, _pair(field.padding), "x".join(map(str, field.output_shape)), aligned)


def _effective(args: argparse.Namespace) -> int:
    from ..core.figures import save_figure
    from ..core.images import load_image
    from ..receptive_field.effective import effective_field_figure, effective_receptive_field

    if len(args.layers) != 1:
        raise FeatvisError(f"--effective measures one layer; give exactly one LAYER (got {len(args.layers)})")
    if args.out:
        check_figure_output(args.out)  # refuse a bad extension or path before any work
    photos = [load_image(path) for path in args.effective]
    model = model_from_args(args)
    erf = effective_receptive_field(model, args.layers[0], photos, input_size=args.input_size)
    path = save_figure(effective_field_figure(erf, model.name), args.out) if args.out else None
    if args.json:
        print_json({**erf.to_dict(), "path": str(path) if path else None})
        return 0
    theory = erf.theoretical.visible(erf.unit)
    print(f"{erf.layer} unit {erf.unit}: effective field {erf.size:.0f} px ({erf.mass:.0%} of the gradient mass; "
          f"std {erf.std[0]:.1f} x {erf.std[1]:.1f} px) vs theoretical {_pair(erf.theoretical.size)} px "
          f"({theory.height}x{theory.width} inside the image): {erf.fraction:.0%}, over {erf.inputs} photo(s)")
    if path:
        print(f"wrote {path}")
    return 0

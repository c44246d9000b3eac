"""`featvis layers MODEL`: every addressable layer with its type and output shape; concat layers
(e.g. ``mixed4a_pre_relu``) name the modules whose outputs they join, and a module called more than
once per forward pass (one activation module shared by every block) lists its calls, ``name#k``, the names
analyses take."""

from __future__ import annotations

import argparse

from .common import add_model_args, model_from_args, print_json, printable


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("layers", help="list every addressable layer with type and output shape")
    add_model_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.layer_table import layer_table

    model = model_from_args(args, pretrained=False)  # shapes need no weights
    rows = layer_table(model, args.input_size or model.input_size)
    if args.json:
        print_json(rows)
        return 0
    width = max(len(printable(name)) + 2 for row in rows for name in [row["name"], *(s["name"] for s in row.get("sites", []))])
    for row in rows:
        shape = "x".join(map(str, row["output_shape"])) if row["output_shape"] else "-"
        aliases = f"  ({', '.join(row['aliases'])})" if row["aliases"] else ""
        parts = f"  (concat of {' + '.join(row['concat'])})" if "concat" in row else ""
        calls = f"  (runs {row['calls']} times per forward pass: name one call)" if "sites" in row else ""
        print(printable(f"{printable(row['name']):<{width}}  {row['type']:<18} {shape}{aliases}{parts}{calls}"))
        for site in row.get("sites", []):
            shape = "x".join(map(str, site["output_shape"])) if site["output_shape"] else "-"
            print(printable(f"  {printable(site['name']):<{width - 2}}  {'':<18} {shape}"))
    return 0

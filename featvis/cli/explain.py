"""`featvis explain MODEL IMAGE --layer L [--target LABEL] [--groups K] [--steps N] -o out.html [--json]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._util.errors import FeatvisError
from ..optvis.settings import EXPLAIN_ICONS  # torch-free
from .common import add_model_args, add_out_arg, add_render_args, model_from_args, print_json, render_settings, show_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain", help="building blocks of interpretability: semantic dictionary, activation grid, neuron groups, attribution",
        description="Explain the model's decision on a photo at one hidden layer (Olah et al., Distill 2018): the top "
                    "channels at a position with their feature visualizations, every position's activation visualized at "
                    "its receptive-field centre, NMF neuron groups with maps and icons, and gradient x activation "
                    "attribution per position, per group and from an earlier layer's groups.")
    add_model_args(parser)
    parser.add_argument("image", metavar="IMAGE", help="the photo (PNG, JPEG, ...)")
    parser.add_argument("--layer", default="mixed4d", metavar="L", help="layer to explain (default mixed4d)")
    parser.add_argument("--target", metavar="LABEL|INDEX", help="class to explain (default: the top-1 class)")
    parser.add_argument("--groups", type=int, default=6, metavar="K", help="NMF neuron groups (default 6)")
    parser.add_argument("--top", type=int, default=6, metavar="N", help="channels in the semantic dictionary (default 6)")
    parser.add_argument("--position", type=_position, metavar="Y,X", help="dictionary position (default: the strongest)")
    parser.add_argument("--from-layer", default="auto", metavar="L|auto|none",
                        help="earlier layer whose groups are attributed to --layer's (default auto: three blocks back)")
    parser.add_argument("--grid-step", type=int, default=1, metavar="N", help="render every N-th grid position per axis, icons N units wide (default 1)")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="icons per optimisation (default 16)")
    add_render_args(parser, EXPLAIN_ICONS, what="icon", no_steps=True,
                    steps_help=f"optimisation steps of every icon (default {EXPLAIN_ICONS.steps}; 0: no icons)")
    add_out_arg(parser, what="the HTML page (self-contained)", metavar="OUT.html")
    parser.add_argument("--figures", metavar="DIR", help="also write attribution.png, groups.png and grid.png into DIR")
    parser.set_defaults(func=run)


def _position(text: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a position Y,X like 7,7, got '{text}'") from None
    return y, x


def run(args: argparse.Namespace) -> int:
    from .._util.fileio import atomic_write_text, ensure_writable_dir
    from ..core.figures import save_figure
    from ..core.images import load_image, save_image
    from ..explain import attribution_figure, explain, explanation_page, grid_image, groups_figure

    output = Path(args.out)
    if output.suffix.lower() not in (".html", ".htm"):
        raise FeatvisError(f"the page must be an .html file, got '{output.name}'; use e.g. -o explain.html")
    settings = render_settings(args, steps=max(args.steps, 1))  # bad values refused before any work
    ensure_writable_dir(output.parent if str(output.parent) else ".")
    figures = ensure_writable_dir(args.figures) if args.figures else None
    photo = load_image(args.image)
    model = model_from_args(args)
    earlier = {"auto": "auto", "none": None}.get(args.from_layer, args.from_layer)
    result = explain(model, photo, args.layer, target=args.target, groups=args.groups, top=args.top, position=args.position,
                     earlier=earlier, settings=settings, grid_step=args.grid_step,
                     icons=args.steps > 0, batch=args.batch, progress=show_progress(args))
    title = f"{model.name} on {Path(args.image).name}: why '{result.label}'? ({result.layer})"
    atomic_write_text(output, explanation_page(model, result, title))
    written = [str(output)]
    if figures is not None:
        written.append(str(save_figure(attribution_figure(model, result), figures / "attribution.png")))
        written.append(str(save_figure(groups_figure(model, result), figures / "groups.png")))
        if result.grid_icons:
            written.append(str(save_image(grid_image(result), figures / "grid.png")))
    if args.json:
        print_json({**result.to_dict(), "paths": written})
        return 0
    print(f"wrote {', '.join(written)}: '{result.label}' ({result.target}), p = {result.prob:.3f}, at {result.layer}")
    print(f"attribution: sum over positions {float(result.attribution.sum()):.4f}, total {result.total:.4f}, "
          f"groups {float(result.groups.attribution.sum()):.4f} (residual {result.residual:+.4f})")
    for j, value in enumerate(result.groups.attribution.tolist()):
        y, x = divmod(int(result.groups.maps[j].argmax()), result.groups.maps.shape[-1])
        print(f"  group {j}: attribution {value:+.4f}, strongest at {y},{x}")
    return 0

"""The server's HTML: every page and fragment is built with featvis._util.html's ``tag``, so every name
from the user or the model (layer names, labels, photo names, error messages) is escaped.

Pictures that are not rendered yet appear as a placeholder with a progress bar
(``data-picture`` = the picture's digest); the page's script polls ``/api/status`` and swaps
the picture in when it is ready. Sections computed in the background (dataset examples,
circuits, effective field, a photo's analysis) are placeholders with ``data-fragment`` = the
URL of their HTML, fetched until it answers 200. Pages never wait for a render.
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import quote

from .._util.html import Markup, document, join, tag
from ..gallery.circuits import weight_map
from ..gallery import slug
from ..gallery.site import CSS as GALLERY_CSS
from .queue import Picture
from .state import State
from .units import ModelInfo, Row, central_box

CSS = GALLERY_CSS + """
.pending{width:128px;height:128px;display:flex;flex-direction:column;justify-content:center;align-items:center;
background:#eee;border:1px dashed #bbb;font-size:.75em;color:#555;gap:6px}
.pending.small{width:72px;height:72px}
.bar{width:80%;height:6px;background:#ddd;border-radius:3px;overflow:hidden}.bar div{height:100%;width:0;background:#1558b0;
transition:width .2s}
.failed{background:#fee;border-color:#c33;color:#900}
.fields td{font-variant-numeric:tabular-nums}.err{color:#900}
.rf svg{border:1px solid #ccc;background:#fff}
.block{border-top:1px solid #ddd;padding:4px 0}.block table{margin:0}.block details{margin:2px 0 4px 12px;font-size:.9em}
.strip .pending{width:72px;height:72px}
.pending img.preview{width:100%;height:auto;flex:1;object-fit:contain;min-height:0}
.big img{width:auto;height:auto;max-width:100%}
.circuits .wmap{width:128px;height:128px}
"""

SCRIPT = r"""
const ASK = new Set();
function place(box, st) {
  if (st.state === "done") {
    const holder = document.createElement("span");
    holder.className = "pictures";
    for (const file of st.files) {
      const img = document.createElement("img");
      img.src = "/files/" + file.split("/").map(encodeURIComponent).join("/");
      img.alt = box.dataset.alt || "";
      img.className = box.classList.contains("small") ? "small" : "";
      img.dataset.done = box.dataset.picture;
      holder.appendChild(img);
    }
    box.replaceWith(holder);
    return;
  }
  const label = box.querySelector(".label"), bar = box.querySelector(".bar div");
  if (st.state === "failed") {
    box.classList.add("failed"); box.removeAttribute("data-picture");
    label.textContent = "failed: " + (st.error || "");
  } else if (st.state === "running") {
    label.textContent = "rendering " + Math.round(st.progress * 100) + "%"; bar.style.width = (st.progress * 100) + "%";
    if (st.preview && box.dataset.preview !== String(st.preview)) {
      box.dataset.preview = String(st.preview);
      let img = box.querySelector("img.preview");
      if (!img) { img = document.createElement("img"); img.className = "preview"; img.alt = "preview"; box.prepend(img); }
      img.src = "/api/preview/" + box.dataset.picture + "/0?step=" + st.preview;
      img.title = "step " + st.preview + " of the render, refined in place";
    }
  } else if (st.state === "queued") {
    label.textContent = st.ahead ? "queued (" + st.ahead + " images ahead)" : "queued";
  }
}
async function poll() {
  let waiting = false;
  const boxes = [...document.querySelectorAll("[data-picture]")].filter(b => !b.dataset.enqueue || ASK.has(b));
  if (boxes.length) {
    waiting = true;
    try {
      const query = boxes.map(b => "key=" + encodeURIComponent(b.dataset.picture)).join("&");
      const states = await (await fetch("/api/status?" + query)).json();
      for (const box of boxes) if (states[box.dataset.picture]) place(box, states[box.dataset.picture]);
    } catch (e) {}
  }
  for (const part of document.querySelectorAll("[data-fragment]")) {
    waiting = true;
    try {
      const answer = await fetch(part.dataset.fragment);
      if (answer.status === 200) {
        const html = await answer.text();
        const holder = document.createElement("div");
        holder.innerHTML = html;
        part.replaceWith(...holder.childNodes);
      } else if (answer.status >= 400) {
        part.removeAttribute("data-fragment"); part.classList.add("err");
        part.textContent = await answer.text();
      }
    } catch (e) {}
  }
  if (waiting || document.querySelector("[data-enqueue]")) setTimeout(poll, 250);
}
const seen = new IntersectionObserver(entries => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const box = entry.target;
    seen.unobserve(box);
    fetch(box.dataset.enqueue, {method: "POST"}).then(() => ASK.add(box));
  }
});
document.querySelectorAll("[data-enqueue]").forEach(box => seen.observe(box));
poll();
"""


def page(title: str, *body: object, crumbs: Sequence[tuple[str, str]] = ()) -> str:
    """A whole page: navigation crumbs (text, href), the title, the body, the polling script."""
    nav = tag("nav", [join(tag("a", text, href=href), " / ") for text, href in crumbs], tag("a", "upload a photo", href="/photo"))
    return document(title, nav, tag("h1", title), *body, tag("script", Markup(SCRIPT)), css=CSS)


def unit_href(layer: str, channel: int) -> str:
    return f"/layer/{quote(layer, safe='')}/{channel}"


def layer_href(layer: str) -> str:
    return f"/layer/{quote(layer, safe='')}"


def picture_box(queue_status: dict | None, picture: Picture, alt: str, small: bool = False, lazy: str | None = None) -> Markup:
    """The picture itself when finished, else its placeholder with a progress bar."""
    if picture.state == State.DONE:
        return join(tag("img", src="/files/" + quote(rel), alt=alt, class_="small" if small else None,
                        data_done=picture.digest) for rel in picture.rels)
    failed = picture.state == State.FAILED
    label = f"failed: {picture.error}" if failed else ("waiting" if lazy else "queued")
    return tag("div", tag("div", tag("div"), class_="bar"), tag("span", label, class_="label"),
               class_="pending" + (" small" if small else "") + (" failed" if failed else ""),
               data_picture=None if failed else picture.digest, data_alt=alt, data_enqueue=lazy)


def error_page(status: int, message: str) -> str:
    return page(f"{status}: {message}", tag("p", "The server keeps running; go back or start from the ", tag("a", "index", href="/"), "."),
                crumbs=[("index", "/")])


# --- index and layer pages -------------------------------------------------------------------
def _shape(shape: Sequence[int] | None) -> str:
    return "—" if shape is None else "×".join(str(s) for s in shape)


def _field_cells(row: Row) -> list[Markup]:
    field = row.field
    if field is None or field.size is None:
        return [tag("td", "—", class_="muted")] * 3
    return [tag("td", f"{field.size[0]}×{field.size[1]}"), tag("td", f"{field.stride[0]}×{field.stride[1]}"),
            tag("td", f"{field.padding[0]}×{field.padding[1]}")]


def _precision_shown(info: ModelInfo) -> str:
    """The number format pictures are made in: with "auto" on a bfloat16 CPU, each picture's own (the guard decides)."""
    if "guard" in info.base:
        return "bfloat16 where its start gradient agrees with float32's, else float32 (each picture says which)"
    return info.base["precision"]


def _layer_row(row: Row) -> Markup:
    name = tag("a", row.name, href=layer_href(row.name)) if row.has_channels and "/" not in row.name else row.name
    return tag("tr", tag("td", name), tag("td", row.path, class_="muted"), tag("td", row.type), tag("td", _shape(row.shape)),
               *_field_cells(row))


def index_page(info: ModelInfo, examples: bool, strips: dict[str, list[Markup]]) -> str:
    """The model's blocks in order (`ModelInfo.blocks`), each with a strip of its first channels' pictures
    (``strips``: picture boxes by block name) and the layers inside it folded under it."""
    head = tag("tr", [tag("th", h) for h in ("layer", "module", "type", "output", "receptive field", "stride", "padding")])
    blocks = []
    for name, rows in info.blocks.items():
        inner = [tag("details", tag("summary", f"{len(rows) - 1} layer(s) inside: branches, activations, pre-activations"),
                     tag("table", head, [_layer_row(row) for row in rows[1:]], class_="fields"))] if len(rows) > 1 else []
        strip = [tag("div", tag("div", strips[name], class_="grid strip"))] if strips.get(name) else []
        blocks.append(tag("section", tag("table", head if not blocks else None, _layer_row(rows[0]), class_="fields"),
                          *strip, *inner, class_="block", id=f"block-{slug(name)}"))
    intro = tag("p", f"Model fingerprint {info.fingerprint[:16]}; pictures: {info.settings.steps} steps, "
                     f"{info.settings.size} px, seed {info.settings.seed}, precision {_precision_shown(info)}"
                     + ("; dataset examples from the image collection" if examples else "") + ".", class_="muted")
    return page(f"{info.model.name}: layers", intro, *blocks, crumbs=[("index", "/")])


def layer_page(info: ModelInfo, row: Row, pictures: list[Picture], lazy: list[str | None]) -> str:
    cards = [tag("div", tag("a", picture_box(None, picture, f"{row.name}:{picture.channel}", lazy=ask),
                            tag("div", f"{row.name}:{picture.channel}"), href=unit_href(row.name, picture.channel)),
                 class_="card") for picture, ask in zip(pictures, lazy)]
    before, after = info.neighbours(row)
    links = [tag("a", f"← {before}", href=layer_href(before)) if before else None, " ",
             tag("a", f"{after} →", href=layer_href(after)) if after else None]
    text = f"{row.shape[0]} channels, output {_shape(row.shape)} ({row.type}, module {row.path})."
    return page(f"{row.name}", tag("p", text, class_="muted"), tag("p", links), tag("div", cards, class_="grid"),
                crumbs=[("index", "/"), (row.name, layer_href(row.name))])


# --- unit page -------------------------------------------------------------------------------
def rf_svg(info: ModelInfo, row: Row) -> Markup:
    """The central unit's receptive field as a box on the model's input square."""
    box = central_box(row.field) if row.field is not None and row.field.size is not None else None
    if box is None:
        return tag("p", "no receptive field: the tracer cannot follow this layer" if row.field is None else "global field",
                   class_="muted")
    side = info.model.input_size
    y0, x0, y1, x1 = box
    svg = tag("svg", tag("rect", x=0, y=0, width=side, height=side, fill="#f4f4f4"),
              tag("rect", x=x0, y=y0, width=x1 - x0, height=y1 - y0, fill="#1558b033", stroke="#1558b0", stroke_width=2),
              viewBox=f"0 0 {side} {side}", width=160, height=160)
    field = row.field
    text = (f"Theoretical field {field.size[0]}×{field.size[1]} px, stride {field.stride[0]}, padding {field.padding[0]}; "
            f"the central unit {tuple(field.central_unit())} sees rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1} "
            f"of the {side} px input.")
    return tag("div", svg, tag("p", text, class_="muted"), class_="rf")


def unit_page(info: ModelInfo, row: Row, channel: int, pictures: dict[str, Picture], photos: int,
              loads: dict | None = None) -> str:
    """``photos``: the size of the --images collection (0: none); ``loads``: the unit's other side in an attached
    dictionary (`featvis.explain.describe.loads_of`)."""
    name = f"{row.name}:{channel}"
    sections = []
    for kind, title in (("positive", "Feature visualization"), ("negative", "Negative"), ("diversity", "Diversity")):
        if kind in pictures:
            picture = pictures[kind]
            note = tag("p", f"{picture.spec}: the layer before its activation, since a unit after a ReLU cannot go below 0",
                       class_="muted") if kind == "negative" and picture.spec != f"-{name}" else None
            sections += [tag("h2", title), *([note] if note else []), tag("div", tag("div", picture_box(None, picture, f"{name} {kind}"),
                                                                class_="card"), class_="grid big", id=f"picture-{kind}")]
    links = []
    if channel > 0:
        links.append(tag("a", f"← {row.name}:{channel - 1}", href=unit_href(row.name, channel - 1)))
    if channel + 1 < row.shape[0]:
        links.append(tag("a", f"{row.name}:{channel + 1} →", href=unit_href(row.name, channel + 1)))
    for other in info.neighbours(row):
        if other is not None and channel < info.row(other).shape[0]:
            links.append(tag("a", f"{other}:{channel}", href=unit_href(other, channel)))
    sections += [tag("h2", "Neighbours"), tag("p", [join(" · " if i else None, link) for i, link in enumerate(links)],
                                              id="neighbours")]
    if loads is not None:
        sections += [tag("h2", "Dictionary"), dictionary_links(loads)]
    sections += [tag("h2", "Dataset examples")]
    if photos:
        sections.append(pending_fragment(f"/fragment/examples/{quote(row.name, safe='')}/{channel}",
                                         f"computing this layer's dataset examples: one pass over the {photos} photos for all "
                                         "its channels, once, in the background (numbers are kept; crops are cut when shown)"))
    else:
        sections.append(tag("p", "start the server with --images SOURCE to see the photos that drive this unit", class_="muted"))
    sections += [tag("h2", "Classes it promotes"), pending_fragment(f"/fragment/promotes/{quote(row.name, safe='')}/{channel}",
                                                                    "finding the classes it promotes")]
    sections += [tag("h2", "Circuits"), pending_fragment(f"/fragment/circuits/{quote(row.name, safe='')}/{channel}",
                                                         "computing expanded weights")]
    sections += [tag("h2", "Receptive field"), rf_svg(info, row),
                 pending_fragment(f"/fragment/erf/{quote(row.name, safe='')}", "measuring the effective receptive field")]
    return page(name, *sections, crumbs=[("index", "/"), (row.name, layer_href(row.name)), (name, unit_href(row.name, channel))])


def pending_fragment(url: str, what: str) -> Markup:
    return tag("div", tag("div", tag("div", style="width:100%;animation:none"), class_="bar"), tag("span", what + " …", class_="label"),
               class_="muted", data_fragment=url)


def dictionary_links(loads: dict) -> Markup:
    """A neuron's features (its polysemanticity count), or a feature's neurons, as links to their pages."""
    if "features" in loads:
        text = (f"{loads['polysemanticity']} features of the dictionary load on this neuron (its count of meanings; "
                "a feature loads where its unit direction weighs at least 0.3):")
        units = [(loads["layer"], f) for f in loads["features"]]
    else:
        text = f"This is a feature of a sparse dictionary of {loads['layer']}. It loads on these neurons, strongest first:"
        units = [(loads["layer"], c) for c in loads["neurons"]]
    links = [tag("a", f"{layer}:{unit}", href=unit_href(layer, unit)) for layer, unit in units]
    return tag("div", tag("p", text, class_="muted"),
               tag("p", [join(" · " if i else None, link) for i, link in enumerate(links)] or "none"), id="dictionary")


def examples_fragment(layer: str, entries: list[dict], urls: list[tuple[str, str | None]], classes: list[dict] = ()) -> str:
    """The unit's top photos, and the classes the model predicts for them (``classes``: `seen_as`)."""
    if not entries:
        return tag("p", "no photo made this unit fire", class_="muted")
    cards = [tag("div", tag("a", tag("img", src=crop, alt=f"{entry.get('path', '')}"), href=full or crop),
                 tag("div", f"{entry['activation']:.3g}"), tag("div", str(entry.get("path", "")).rsplit("/", 1)[-1],
                                                              class_="muted"), class_="card")
             for entry, (crop, full) in zip(entries, urls)]
    seen = ", ".join(f"{c['label']} ({c['count']}/{len(entries)})" for c in classes)
    return join(tag("div", cards, class_="grid strip examples"),
                tag("p", f"The model classifies these photos as: {seen}." if seen else "", class_="muted", id="seen-as"))


def promotes_fragment(classes: list[dict], photos: bool) -> str:
    """The classes a unit promotes most: each logit's rise per unit of the channel's activation."""
    how = ("the mean over the first photos of --images" if photos else
           "through the linearized network (ReLUs as the identity; start the server with --images to average over photos)")
    rows = [tag("tr", tag("td", f"{c['label']} ({c['index']})"), tag("td", f"{c['value']:+.3g}")) for c in classes]
    return join(tag("table", tag("tr", tag("th", "class"), tag("th", "d logit / d activation")), rows, id="promotes"),
                tag("p", f"How much each class score rises with this channel's activation, {how}.", class_="muted"))


def circuits_fragment(data: dict, thumbs: dict[tuple[str, int], Markup]) -> str:
    parts: list[Markup] = [tag("p", problem, class_="muted") for problem in data["problems"]]
    for side, title, other in (("inputs", "Strongest inputs from", data["source"]), ("outputs", "Strongest outputs to", data["target"])):
        connections = data[side]
        if not connections:
            parts.append(tag("p", f"no {side}: no layer {'before' if side == 'inputs' else 'after'} this one to connect to"
                         if other is None else f"no {side} {'from' if side == 'inputs' else 'to'} {other}", class_="muted"))
            continue
        limit = max(abs(v) for c in connections for row in c["map"] for v in row) or 1.0
        cards = [tag("div", tag("a", thumbs.get((c["layer"], c["channel"])), tag("div", f"{c['layer']}:{c['channel']}"),
                                href=unit_href(c["layer"], c["channel"]), class_="circuit-link"),
                     weight_map(c["map"], limit), tag("div", f"|w| {c['strength']:.3g} · Σ {c['sum']:+.3g}", class_="muted"),
                     class_="card") for c in connections]
        parts += [tag("h3", f"{title} {other}"), tag("div", cards, class_="grid circuits")]
    return join(parts)


def erf_fragment(data: dict, png: str) -> str:
    text = (f"Effective field (Luo et al. 2016, {data['inputs']} noise inputs): {data['effective_size']:.1f} px holds "
            f"{data['mass']:.0%} of the gradient, {data['fraction']:.0%} of the theoretical field.")
    return join(tag("p", text, class_="muted"), tag("img", src=png, alt="effective receptive field", style="max-width:640px"))


# --- photos ----------------------------------------------------------------------------------
def upload_page(limit_mb: float, error: str | None = None) -> str:
    form = tag("form", tag("input", type="file", name="photo", accept="image/*", required=True),
               tag("button", "explain this photo", type="submit"), method="post", action="/photo", enctype="multipart/form-data")
    note = tag("p", f"PNG or JPEG, up to {limit_mb:g} MB. The photo stays on this machine, in the server's cache.", class_="muted")
    return page("Explain a photo", tag("p", error, class_="err") if error else None, form, note, crumbs=[("index", "/")])


def photo_page(photo_id: str) -> str:
    return page(f"Photo {photo_id[:8]}", tag("img", src=f"/photo/{photo_id}/photo.png", alt="the uploaded photo",
                                              style="max-width:448px;max-height:448px"),
                pending_fragment(f"/fragment/photo/{photo_id}", "classifying, saliency and building blocks"),
                crumbs=[("index", "/"), ("photo", "/photo")])


def photo_fragment(photo_id: str, data: dict, dictionary: Sequence[Markup] = ()) -> str:
    """The analysis of a photo; ``dictionary``: a picture box per channel of the semantic dictionary (in
    ``data["explain"]["channels"]`` order), each linked to its unit page."""
    classes = tag("table", tag("tr", tag("th", "class"), tag("th", "probability")),
                  [tag("tr", tag("td", f"{c['label']} ({c['index']})"), tag("td", f"{c['prob']:.1%}")) for c in data["classes"]],
                  id="classes")
    expl = data["explain"]
    cards = [tag("div", tag("a", box, tag("div", f"{expl['layer']}:{c}"), href=unit_href(expl["layer"], c)),
                 tag("div", f"{value:.3g}", class_="muted"), class_="card")
             for c, value, box in zip(expl.get("channels", []), expl.get("values", []), dictionary)]
    return join(tag("h2", "The photo as the model sees it"),
                tag("img", src=f"/photo/{photo_id}/input.png", alt="the photo as the model sees it", style="width:224px"),
                tag("h2", "Classification"), classes,
                tag("h2", "Saliency (vanilla gradient)"),
                tag("img", src=f"/photo/{photo_id}/saliency.png", alt="saliency", style="max-width:640px"),
                tag("h2", f"Building blocks at {expl['layer']}: why '{expl['label']}'?"),
                tag("p", f"Attribution total {expl['total']:.4g}; groups " + ", ".join(f"{v:+.3g}" for v in expl["groups"]),
                    class_="muted"),
                *([tag("h3", "Semantic dictionary: the channels that fire most where the attribution is largest"),
                   tag("div", cards, class_="grid strip", id="dictionary")] if cards else []),
                tag("p", tag("a", "open the building blocks on their own page", href=f"/photo/{photo_id}/explain.html")),
                tag("iframe", src=f"/photo/{photo_id}/explain.html", title="building blocks", id="explanation",
                    style="width:100%;height:85vh;min-height:600px;resize:vertical;border:1px solid #ccc", sandbox=""))


"""The gallery's static site, built from the merged manifest records alone.

``index.html`` (the model: first-layer filters, one row of thumbnails per layer) links to
``layers/<layer>.html`` (every rendered channel of a layer) which links to
``layers/<layer>/<channel>.html`` (the visualization, its negative and diversity set, the
top photo patches, and the numbers) beside ``layers/<layer>/<channel>.json``. All links are
relative, nothing loads from the network, and every piece of text goes through featvis._util.html's
escaping (layer names of user models and photo names are user data). Pages are rewritten only
when their content changes.
"""

from __future__ import annotations

import html
import json
import posixpath
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlparse

from .._util.fileio import atomic_write_text
from .._util.html import Markup, document, join, tag, url
from .circuits import circuit_sections
from .manifest import Key, Record

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:1em 1.5em;
color:#222;background:#fafafa}
a{color:#1558b0;text-decoration:none}a:hover{text-decoration:underline}
nav{font-size:.9em;margin-bottom:.5em;color:#666}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin:1.2em 0 .4em}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:4px;text-align:center;font-size:.8em}
.card img{display:block;width:128px;height:128px;object-fit:contain}
.strip img{width:72px;height:72px;object-fit:contain;border:1px solid #ddd;background:#fff}
.filters img{width:42px;height:42px;image-rendering:pixelated;border:1px solid #ccc}
.big img{max-width:100%;width:320px;border:1px solid #ccc;background:#fff}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 10px;border-bottom:1px solid #e4e4e4;text-align:left}
code{background:#eee;padding:0 3px;border-radius:3px}
.muted{color:#777}
.circuits img{width:96px;height:96px}.circuits .wmap{display:block;margin:3px auto;border:1px solid #ccc}
"""


def _number(value: float | None, fmt: str = ".4g") -> str:
    return "—" if value is None else format(value, fmt)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _layer_title(info: dict) -> str:
    aliases = [a for a in info.get("aliases", []) if a != info["name"]]
    names = ([info["path"]] if info["path"] != info["name"] else []) + aliases
    return f"{info['name']} ({', '.join(names)})" if names else info["name"]


class Site:
    """Pages for one gallery folder; ``records`` are the merged, verified manifest records."""

    def __init__(self, root: Path, model: dict, records: dict[Key, Record]):
        self.root = root
        self.model = model
        self.layers: dict[str, dict] = {}
        self.filters: list[Record] = []
        for record in sorted(records.values(), key=lambda r: r.finished):
            if record.kind == "filters":
                self.filters.append(record)
                continue
            entry = self.layers.setdefault(record.layer, {"info": record.layer_info, "channels": {}})
            entry["info"] = record.layer_info  # the newest record names the layer
            entry["channels"].setdefault(record.channel, {})[record.kind] = record
        for entry in self.layers.values():  # a channel page needs its visualization
            entry["channels"] = {c: kinds for c, kinds in sorted(entry["channels"].items()) if "positive" in kinds}
        self.ordered = sorted(self.layers.values(), key=lambda e: (e["info"].get("order", 0), e["info"]["path"]))
        self.named = {name: entry for entry in self.ordered
                      for name in (entry["info"]["name"], entry["info"]["path"], *entry["info"].get("aliases", []))}

    # --- paths ---------------------------------------------------------------------------------
    @staticmethod
    def layer_page(info: dict) -> str:
        return f"layers/{info['slug']}.html"

    @staticmethod
    def channel_page(info: dict, channel: int, suffix: str = "html") -> str:
        return f"layers/{info['slug']}/{channel}.{suffix}"

    @staticmethod
    def link(page: str, target: str) -> str:
        """URL of ``target`` (relative to the gallery root) from ``page`` (also root-relative)."""
        return url(posixpath.relpath(target, posixpath.dirname(page) or "."))

    # --- building ------------------------------------------------------------------------------
    def build(self) -> list[Path]:
        """Write every page and channel JSON that changed; returns the paths written."""
        outputs: dict[str, str] = {"index.html": self.index()}
        for entry in self.ordered:
            info = entry["info"]
            outputs[self.layer_page(info)] = self.layer(entry)
            channels = list(entry["channels"])
            for position, channel in enumerate(channels):
                neighbours = (channels[position - 1] if position else None,
                              channels[position + 1] if position + 1 < len(channels) else None)
                data = self.channel_data(info, channel, entry["channels"][channel])
                outputs[self.channel_page(info, channel, "json")] = json.dumps(data, indent=1) + "\n"
                outputs[self.channel_page(info, channel)] = self.channel(info, channel, data, neighbours)
        # A run killed between two writes must leave no broken link: pages are written deepest first,
        # first with the links whose targets do not exist yet left out (new pages link to each
        # other), then, once every page exists, in full.
        written: dict[Path, None] = {}
        partial = []
        for rel in sorted(outputs, key=lambda rel: rel.count("/"), reverse=True):
            text = _without_missing_links(outputs[rel], (self.root / rel).parent) if rel.endswith(".html") else outputs[rel]
            if text != outputs[rel]:
                partial.append(rel)
            self._write(rel, text, written)
        for rel in partial:
            self._write(rel, outputs[rel], written)
        return list(written)

    def _write(self, rel: str, text: str, written: dict[Path, None]) -> None:
        """Write ``text`` to ``rel`` unless the file already holds it; note the path in ``written``."""
        path = self.root / rel
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            atomic_write_text(path, text)
            written[path] = None

    def channel_data(self, info: dict, channel: int, kinds: dict[str, Record]) -> dict:
        """The per-channel JSON: settings, activation, ratio to natural photos, every image path."""
        positive = kinds["positive"]
        settings = positive.settings
        data = {
            "model": self.model.get("name"),
            "layer": info["name"],
            "layer_path": info["path"],
            "channel": channel,
            **{name: settings.get(name) for name in ("seed", "steps", "size", "precision")},
            "param": settings.get("param", "fft"),
            **positive.result,
        }
        for kind in ("negative", "diversity"):
            data[kind] = kinds[kind].result if kind in kinds else None
        data["patches"] = kinds["patches"].result["patches"] if "patches" in kinds else []
        data["photos"] = kinds["patches"].result["photos"] if "patches" in kinds else None
        data["circuits"] = kinds["circuits"].result if "circuits" in kinds else None
        data["description"] = kinds["description"].result if "description" in kinds else None
        return data

    def _page(self, page: str, title: str, crumbs: Iterable[tuple[str, str]], here: str, *body) -> str:
        """A page with a breadcrumb trail of (text, root-relative target) ending at ``here``."""
        nav = tag("nav", [join(tag("a", text, href=self.link(page, target)), " › ") for text, target in crumbs], here)
        return document(title, nav, *body, css=CSS)

    def _thumb(self, page: str, info: dict, channel: int, kinds: dict[str, Record], css: str) -> Markup:
        result = kinds["positive"].result
        return tag("a", tag("img", src=self.link(page, result["image"]), alt=f"{info['name']} channel {channel}",
                            title=f"{result['spec']}  activation {_number(result['activation'])}"),
                   href=self.link(page, self.channel_page(info, channel)), class_=css)

    def _linked_thumb(self, page: str, layer: str, channel: int) -> Markup | None:
        """The thumbnail of ``layer``'s ``channel`` linked to its page, when the gallery has that page."""
        entry = self.named.get(layer)
        if entry is None or channel not in entry["channels"]:
            return None
        return self._thumb(page, entry["info"], channel, entry["channels"][channel], "")

    def index(self) -> str:
        page = "index.html"
        name = self.model.get("name", "model")
        total = sum(len(e["channels"]) for e in self.ordered)
        body = [tag("h1", f"Feature visualization gallery: {name}"),
                tag("p", f"{total} channels in {len(self.ordered)} layers. ",
                    tag("span", f"model fingerprint {str(self.model.get('fingerprint', ''))[:16]}", class_="muted"))]
        for record in self.filters:
            info = record.layer_info
            body.append(tag("h2", f"First-layer filters: {_layer_title(info)}"))
            body.append(tag("p", f"{len(record.result['images'])} kernels acting on RGB, each scaled to its own "
                                 "largest weight (grey = 0).", class_="muted"))
            body.append(tag("div", [tag("img", src=self.link(page, image), alt=f"filter {i}", title=f"filter {i}")
                                    for i, image in enumerate(record.result["images"])], class_="grid filters"))
        body.append(tag("h2", "Layers"))
        rows = [tag("tr", tag("th", "layer"), tag("th", "channels shown"), tag("th", "first channels"))]
        for entry in self.ordered:
            info = entry["info"]
            strip = [self._thumb(page, info, c, kinds, "") for c, kinds in list(entry["channels"].items())[:8]]
            rows.append(tag("tr",
                            tag("td", tag("a", _layer_title(info), href=self.link(page, self.layer_page(info)))),
                            tag("td", f"{len(entry['channels'])} of {info['channels']}"),
                            tag("td", tag("div", strip, class_="grid strip"))))
        body.append(tag("table", rows))
        body.append(tag("p", "Made with featvis (", tag("code", "featvis gallery"), "). Every channel page has its "
                             "settings and numbers; each also as JSON.", class_="muted"))
        return document(f"featvis gallery: {name}", *body, css=CSS)

    def layer(self, entry: dict) -> str:
        info = entry["info"]
        page = self.layer_page(info)
        cards = []
        for channel, kinds in entry["channels"].items():
            result = kinds["positive"].result
            cards.append(tag("div", self._thumb(page, info, channel, kinds, ""),
                             tag("div", tag("a", f"#{channel}", href=self.link(page, self.channel_page(info, channel)))),
                             tag("div", f"{_number(result['activation'], '.3g')} · {_ratio(result.get('ratio'))}"
                                        f" · {_number(result.get('plausibility'), '.2f')}", class_="muted"), class_="card"))
        shape = "×".join(map(str, info.get("shape", [])))
        return self._page(page, f"{info['name']} — featvis gallery", [("index", "index.html")], info["name"],
                          tag("h1", _layer_title(info)),
                          tag("p", f"{len(cards)} of {info['channels']} channels shown; output shape {shape}. "
                                   "Under each: activation reached · ratio to the best natural photo · plausibility "
                                   "(similarity of its deep features to natural photos', 1 at best).", class_="muted"),
                          tag("div", cards, class_="grid"))

    def channel(self, info: dict, channel: int, data: dict, neighbours: tuple[int | None, int | None]) -> str:
        page = self.channel_page(info, channel)
        sections = [tag("h1", f"{info['name']} channel {channel}")]
        steps = [tag("a", label, href=self.link(page, self.channel_page(info, c)))
                 for label, c in zip(("← previous", "next →"), neighbours) if c is not None]
        sections.append(tag("p", [join(s, " ") for s in steps]))
        figures = [tag("figure", tag("img", src=self.link(page, data["image"]), alt=f"visualization of {data['spec']}"),
                       tag("figcaption", tag("code", data["spec"])), class_="big")]
        if data["negative"]:
            neg = data["negative"]
            figures.append(tag("figure", tag("img", src=self.link(page, neg["image"]), alt=f"negative: {neg['spec']}"),
                               tag("figcaption", "negative ", tag("code", neg["spec"])), class_="big"))
        sections.append(tag("div", figures, class_="grid"))
        rows = [("spec", data["spec"]), ("seed", data["seed"]), ("steps", data["steps"]), ("size", data["size"]),
                ("batch", data["batch"]), ("precision", data["precision"]), ("parameterisation", data["param"]), ("activation reached", _number(data["activation"])),
                ("best natural photo", _number(data.get("natural_max"))), ("ratio", _ratio(data.get("ratio"))),
                ("plausibility", _number(data.get("plausibility"), ".3f"))]
        if data["negative"]:
            rows.append(("negative: objective reached", _number(data["negative"]["activation"])))
        sections.append(tag("table", [tag("tr", tag("th", k), tag("td", v)) for k, v in rows]))
        if data.get("description"):
            sections += [tag("h2", "In the model's words"), tag("p", data["description"]["description"], id="description")]
        sections.append(tag("p", tag("a", "this channel as JSON", href=self.link(page, self.channel_page(info, channel, "json")))))
        if data["diversity"]:
            div = data["diversity"]
            sections.append(tag("h2", f"Diversity ({len(div['images'])} images)"))
            sections.append(tag("div", [tag("figure", tag("img", src=self.link(page, image), alt=f"diversity {k}"),
                                            tag("figcaption", _number(act, ".3g")), class_="card")
                                        for k, (image, act) in enumerate(zip(div["images"], div["activations"]))],
                                class_="grid"))
        if data["patches"]:
            sections.append(tag("h2", "Top photo patches"))
            sections.append(tag("p", "Where this channel fires most in the photos: each patch is the receptive field "
                                     "of the strongest unit (clipped to the photo as the model sees it); click a patch "
                                     "for the whole photo with the box drawn.", class_="muted"))
            sections.append(tag("div", [tag("figure", self._patch(page, p),
                                            tag("figcaption", p["photo"], tag("br"),
                                                f"box y {p['box'][0]}:{p['box'][2]}, x {p['box'][1]}:{p['box'][3]}",
                                                tag("br"), f"activation {_number(p['activation'], '.3g')}"),
                                            class_="card") for p in data["patches"]], class_="grid"))
        if data["circuits"]:
            sections.extend(circuit_sections(data["circuits"], lambda layer, c: self._linked_thumb(page, layer, c)))
        crumbs = [("index", "index.html"), (info["name"], self.layer_page(info))]
        return self._page(page, f"{info['name']} {channel} — featvis gallery", crumbs, f"channel {channel}", *sections)


    def _patch(self, page: str, patch: dict) -> Markup:
        """A patch's crop, linked to its whole photo with the box drawn (when the record has one)."""
        image = tag("img", src=self.link(page, patch["image"]), alt=f"patch of {patch['photo']}")
        return tag("a", image, href=self.link(page, patch["full"])) if patch.get("full") else image


_LINK = re.compile(r'\s(?:href|src)="([^"]*)"')


def _without_missing_links(page: str, folder: Path) -> str:
    """``page`` with every relative href/src whose target file is missing dropped (the element stays)."""
    def keep(match: re.Match) -> str:
        link = urlparse(html.unescape(match.group(1)))
        if link.scheme or link.netloc or not link.path or (folder / unquote(link.path)).is_file():
            return match.group(0)
        return ""
    return _LINK.sub(keep, page)


def build_site(root: Path, model: dict, records: dict[Key, Record]) -> list[Path]:
    """Write the site for ``records`` into ``root``; returns the files that changed."""
    return Site(root, model, records).build()

"""What the server knows about its model: layers, shapes, receptive fields, neighbours, and how a
unit's pictures are named (settings and files, exactly as featvis.gallery names them).

Every layer name or channel from a URL goes through ``layer``/``unit`` here; an unknown layer or
a channel out of range is a `NotFound` naming the problem (the pages answer it with a 404).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._util.errors import FeatvisError
from ..circuits import previous_layer
from ..core.activations import pre_activations
from ..core.layer_table import layer_table
from ..core.plan import Layer
from ..gallery import manifest as mf
from ..gallery.job import unit_objective
from ..models.wrapper import FeatvisModel, model_fingerprint, split_call
from ..optvis import Objective, RenderSettings, picture_key
from ..receptive_field import ReceptiveField, receptive_fields
from .queue import Picture

KINDS = ("positive", "negative", "diversity")
MAX_NAME = 200  # longer layer names in a URL are refused before any lookup


class NotFound(FeatvisError):
    """A layer, channel or file named in a URL that does not exist (answered with a 404 page)."""


@dataclass(frozen=True)
class Row:
    """One line of the layers table."""

    name: str
    path: str
    type: str
    shape: tuple[int, ...] | None
    aliases: tuple[str, ...]
    field: ReceptiveField | None

    @property
    def has_channels(self) -> bool:
        return self.shape is not None and len(self.shape) in (1, 3) and self.shape[0] > 0


class ModelInfo:
    """Layers of ``model`` and the render settings the server uses for every picture."""

    def __init__(self, model: FeatvisModel, settings: RenderSettings, *, diversity: int = 0):
        self.model = model
        self.fingerprint = model_fingerprint(model)
        self.settings = settings  # the policy travels to render unresolved: its guard decides "auto"
        # what an image depends on, as make_gallery keys it (so both name the same files)
        self.base = picture_key(settings, model, self.fingerprint)
        self.diversity = int(diversity)
        fields: dict[str, ReceptiveField] = {}
        try:
            fields = {f.path: f for f in receptive_fields(model)}
            fields |= {f.layer: f for f in receptive_fields(model, list(model.concats))}  # the union of their parts'
        except FeatvisError:
            pass  # a graph the tracer cannot follow: the table shows no fields
        self.rows: list[Row] = []
        for entry in layer_table(model):
            aliases = tuple(entry["aliases"])
            for one in entry.get("sites") or [entry]:  # a module that runs several times: a row per call
                shape = tuple(one["output_shape"]) if one["output_shape"] else None
                call = one["name"][len(entry["name"]):]  # "" or "#k"
                names = tuple(alias + call for alias in aliases)
                name = names[0] if names else one["name"]
                self.rows.append(Row(name, one["name"], entry["type"], shape, names, fields.get(one["name"])))
        self._by_name: dict[str, Row] = {}
        for row in self.rows:
            for key in (row.name, row.path, *row.aliases):
                self._by_name.setdefault(key, row)
        self.order = [row.name for row in self.rows if row.has_channels]
        self.blocks = _blocks(model, self.rows)  # block name -> its rows, block first; in the model's order
        #: the blocks "next" and "previous" walk: those with channels and weights (convolutions, Inception
        #: modules, residual blocks; not the pools and normalisations between them)
        self.stages = [name for name, rows in self.blocks.items() if rows[0].has_channels
                       and any(True for _ in model.net.get_submodule(split_call(rows[0].path)[0]).parameters())]
        self._block_of = {row.name: block for block, rows in self.blocks.items() for row in rows}
        self._next: dict[str, str] = {}
        # a layer's pre-activation, for its negatives: found now, in one pass, before the render queue owns the model
        self._pre = pre_activations(model, [row.name for row in self.rows if row.has_channels and "/" not in row.name])
        features = tuple(model.resolve(name) for name in model.dictionaries)  # side branches: nobody's input
        for row in self.rows:
            before = self.source_of(row.name)
            if before is not None and not any(row.path == f or row.path.startswith(f + ".") for f in features):
                self._next.setdefault(self._by_name[before].name, row.name)

    # --- lookups ----------------------------------------------------------------------------
    def row(self, name: str) -> Row:
        """The layer a URL names (by display name, module path or alias)."""
        if len(name) > MAX_NAME or name not in self._by_name:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise NotFound(f"unknown layer '{shown}' in {self.model.name}; the index lists every layer")
        row = self._by_name[name]
        if not row.has_channels:
            raise NotFound(f"layer '{row.name}' has output shape {list(row.shape or [])}, no channels to show")
        return row

    def unit(self, name: str, channel_text: str) -> tuple[Row, int]:
        """The (layer, channel) a URL names; the channel must be a whole number in range."""
        row = self.row(name)
        if not (channel_text.isascii() and channel_text.isdigit()) or len(channel_text) > 9:
            raise NotFound(f"bad channel '{channel_text[:20]}' for layer '{row.name}'; use a number 0..{row.shape[0] - 1}")
        index = int(channel_text)
        if index >= row.shape[0]:
            raise NotFound(f"channel {index} is out of range for layer '{row.name}', which has {row.shape[0]} channels "
                           f"(0..{row.shape[0] - 1})")
        return row, index

    def gallery_layer(self, row: Row) -> Layer:
        """The gallery's description of a layer (its records carry it)."""
        module = split_call(row.path)[0]
        order = self.model.layer_names().index(module) if module in self.model.layer_names() else len(self.rows)
        return Layer(row.name, row.path, row.aliases, row.shape[0], row.shape, order)

    # --- pictures ---------------------------------------------------------------------------
    def objective(self, row: Row, index: int, kind: str) -> Objective:
        """The gallery's objective for a kind of picture (featvis.gallery.job.unit_objective)."""
        return unit_objective(row.name, index, kind, self.diversity, pre=self._pre.get(row.name))

    def picture(self, row: Row, index: int, kind: str, priority: int = 0) -> Picture:
        """The picture set of one kind for a unit, with the gallery's settings and file names."""
        if kind not in KINDS or (kind == "diversity" and self.diversity < 2):
            raise NotFound(f"no pictures of kind '{kind[:20]}' here; kinds: positive, negative"
                           + (", diversity" if self.diversity >= 2 else ""))
        objective = self.objective(row, index, kind)
        extra = {"images": self.diversity} if kind == "diversity" else {}
        settings = mf.item_key(self.base, row.path, index, kind, spec=objective.name, **extra)
        digest = mf.settings_digest(settings)
        stems = [f"{index}-diversity{k}" for k in range(self.diversity)] if kind == "diversity" else [f"{index}-{kind}"]
        rels = [mf.picture_rel(row.path, stem, settings) for stem in stems]
        return Picture(digest, settings, objective, self.gallery_layer(row), index, kind, rels, priority)

    # --- neighbours -------------------------------------------------------------------------
    def source_of(self, name: str) -> str | None:
        """The layer a unit's inputs come from (featvis.circuits.previous_layer), by display name."""
        row = self._by_name.get(name)
        if row is None or row.path not in self.model.layer_names():
            return None
        try:
            before = previous_layer(self.model, row.path)
        except FeatvisError:
            return None
        found = self._by_name.get(before)
        return found.name if found is not None and found.has_channels else None

    def target_of(self, name: str) -> str | None:
        """The layer whose inputs come from this one (the inverse of ``source_of``); for a dictionary's features,
        the one their layer feeds (a feature adds its direction to that layer)."""
        if name in self.model.dictionaries:
            return self.target_of(self.model.dictionaries[name].layer)
        return self._next.get(self._by_name[name].name) if name in self._by_name else None

    def neighbours(self, row: Row) -> tuple[str | None, str | None]:
        """The layers with channels just before and after ``row``: for a block (``mixed4a``) the blocks
        around it (``mixed3b``, ``mixed4b``), for a layer inside a block its siblings there. A dictionary's
        features (``mixed4c_features``) sit beside their layer: before them is that layer, after them what
        follows it; the network's own layers keep their neighbours."""
        features = self.model.dictionaries
        if row.name in features:
            layer = self._by_name.get(features[row.name].layer)
            return (layer.name, self.neighbours(layer)[1]) if layer is not None else (None, None)
        block = self._block_of.get(row.name)
        if block == row.name or block is None:
            order = self.stages
        else:
            order = [r.name for r in self.blocks[block] if r.has_channels]
        order = [name for name in order if name not in features]
        if row.name not in order:
            return None, None
        at = order.index(row.name)
        return (order[at - 1] if at else None), (order[at + 1] if at + 1 < len(order) else None)


def _blocks(model: FeatvisModel, rows: list[Row]) -> dict[str, list[Row]]:
    """The model's stages as Microscope shows them: the network's children, looking through plain containers
    (Sequential, ModuleList, ModuleDict: ``features.3``, ``layer2.1``, ``_blocks.7``), each with the rows inside
    it (branches, activations, a concat layer of its parts); a container's own row goes with its last stage."""
    stages: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if type(child) in (nn.Sequential, nn.ModuleList, nn.ModuleDict):  # not a subclass: that is a block
                walk(child, f"{prefix}{name}.")
            else:
                stages.append(f"{prefix}{name}")

    walk(model.net, "")

    def stage_of(path: str) -> str | None:
        module = split_call(path)[0]
        inside = [s for s in stages if module == s or module.startswith(s + ".")]
        if inside:
            return inside[0]
        below = [s for s in stages if s.startswith(module + ".")]  # a container: its last stage
        return below[-1] if below else None

    by_stage: dict[str, list[Row]] = {stage: [] for stage in stages}
    for row in rows:
        parts = model.concats.get(row.path, (row.path,))
        stage = stage_of(parts[-1])
        if stage is not None:
            by_stage[stage].append(row)
    blocks: dict[str, list[Row]] = {}
    for stage, members in by_stage.items():
        heads = [row for row in members if split_call(row.path)[0] == stage]
        for head in heads or members[:1]:  # a stage module that runs several times: a block per call
            blocks[head.name] = [head] + [row for row in members if row not in heads]
    return blocks


@torch.no_grad()
def central_box(field: ReceptiveField) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the central unit's receptive field, clipped to the input."""
    try:
        box = field.visible(field.central_unit())
    except FeatvisError:
        return None
    return box.y0, box.x0, box.y1, box.x1

"""`featvis serve`: a local web app over one model, rendering on demand.

- ``units`` (ModelInfo): the model's layers, shapes, receptive fields, neighbours, and each
  unit's pictures named with the gallery's settings digest
- ``queue`` (RenderQueue): one shared worker batching every requested picture into single
  `featvis.render` calls, with measured progress
- ``cache`` (PictureCache): atomic files in the gallery's layout, served only once verified
- ``jobs``/``analyses``: dataset examples (a ``featvis examples`` subprocess per layer),
  circuits, effective fields and photo explanations in the background
- ``pages``/``app``: escaped HTML and the Starlette routes; ``server``: all of it wired up

Names are imported from their modules on first use, so the command line can read
`featvis.serve.state` (the queue's defaults) without importing torch.
"""

from __future__ import annotations

from .._util.lazy import lazy_exports

_EXPORTS: dict[str, str] = {"PhotoSettings": "analyses", "ServeOptions": "server", "Server": "server"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = ["PhotoSettings", "Server", "ServeOptions"]

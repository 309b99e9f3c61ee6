"""ComfyUI nodes of the LetsTalk pack: thin adapters over ``letstalk_core`` (V3 node API).

Importing this package registers the model folder and the web route and defines the node classes;
it loads no model and writes nothing."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import host, routes

host.register_folders()
routes.register()

from . import conversation, encode, face, loaders, memo, sampling  # noqa: E402  (after the folders exist: schemas list files)

NODES: list[type[io.ComfyNode]] = [*loaders.NODES, *memo.NODES, *encode.NODES, *sampling.NODES, *face.NODES,
                                   *conversation.NODES]


class LetsTalkExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES

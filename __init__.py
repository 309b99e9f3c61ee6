"""LetsTalk for ComfyUI: audio-driven long-duration talking-portrait video.

ComfyUI loads this file. It only points at the web extension and, when ComfyUI asks, returns the
extension listing the nodes; no model is loaded and nothing is installed, downloaded or written."""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import LetsTalkExtension

    return LetsTalkExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

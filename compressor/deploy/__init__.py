"""Where a finished run's student goes besides ``final/``: an ONNX export (``--export``), BentoML's model store
and a Bento (``--bento``), the Hugging Face Hub (``--push-to-hub``).

The one part of ``compressor`` that uses ``runtime`` and ``bentos``: the training stack below it (recipe, data,
modeling, run) imports neither, so it stays usable where no serving stack is installed, and the serving side
never imports training code.
"""

"""``python -m runtime.bench``: teacher against student, latency and throughput, and the speed-up guard.

``models`` builds or loads what is timed (model shapes, the ONNX cache, runners); ``timing`` times it and
writes the report."""
from ernie_common.errors import UserError


class BenchError(UserError):
    """A benchmark that cannot run as asked (a missing column, a shape outside an engine's profile...); one line."""

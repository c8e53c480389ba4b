"""One distillation run on disk: its context, the stages, fingerprints and run state, the checks before any
work, teacher fine-tuning, and the published student and report."""
from ernie_common.errors import UserError


class DistillError(UserError):
    """A run that cannot go ahead as configured (e.g. a teacher trained for other labels); one line."""

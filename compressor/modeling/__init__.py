"""The models and what trains them: the student (built, or cut from a teacher), attention maps, the losses,
the distillation trainer and the metrics."""
from ernie_common.errors import UserError


class StudentError(UserError):
    """A student that cannot be built or cut from its teacher as asked; one line naming the fix."""

"""The known ways a run cannot finish, as `TrainingFailure(reason)` (reasons: FAILURE_REASONS)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mri_tune.errors import SpecError, TrainingFailure


@contextlib.contextmanager
def failure_policy() -> Iterator[None]:
    """Turn the known ways a trial cannot finish into TrainingFailure(reason).

    SpecError -> "invalid_spec"; CUDA (or CPU allocator) out-of-memory -> "oom"; a non-finite loss
    already raises TrainingFailure("diverged") inside the loop. Anything else propagates.
    """
    try:
        yield
    except SpecError as err:
        raise TrainingFailure("invalid_spec", str(err)) from err
    except torch.OutOfMemoryError as err:
        raise TrainingFailure("oom", f"Out of GPU memory: {_first_line(err)}. Use a smaller "
                              "batch_size or model, or fewer trials per GPU.") from err
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):  # the CPU allocator's wording
            raise
        raise TrainingFailure("oom", f"Out of memory: {_first_line(err)}. Use a smaller "
                              "batch_size or model.") from err


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

"""Shared fixtures. TRITON_INTERPRET must be set before any triton kernel module is imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Each test starts from the same seeds and leaves torch's process-wide settings as it found
    them (environment variables, thread count, default dtype, grad mode, deterministic
    algorithms), so that no test's outcome depends on which tests ran before it in the same
    process (an in-process command that sets TRITON_F32_DEFAULT must not reach a later test)."""
    env = dict(os.environ)
    threads = torch.get_num_threads()
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)



@pytest.fixture
def model():
    from lcirc_testutils import tiny_lcirc

    return tiny_lcirc(randomize_gates=True)

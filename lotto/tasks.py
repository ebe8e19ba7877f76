"""What every training task of `lotto.parallel` needs in its worker, below the experiments:
the data set cached per process (`shared_data`) and the fault-injection hook for tests
(`injected_fault` in the driver, `inject` in the task; units named by `unit_label`).

Library tasks (`lotto.proxy.run_job`, the supernet's scoring) and the experiments use these
same functions, so a fault set for a unit reaches whichever task trains it.
"""

from __future__ import annotations

import json
import os
import signal

import torch
from omegaconf import DictConfig, OmegaConf

from lotto.data import Data, load_data

_DATA: dict[str, Data] = {}  # this process's data set: loaded once per worker, not once per task


def shared_data(cfg: DictConfig, device: torch.device) -> Data:
    """`load_data(cfg, device)`, cached in this process for the last (data config, device).

    The driver loads through here too, so a serial task finds the driver's copy; one entry only,
    so a long-lived process (tests, a worker reused across runs) holds one data set at a time.
    """
    key = json.dumps([OmegaConf.to_container(cfg, resolve=True), str(device)], sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_data(cfg, device)
    return _DATA[key]


# Fault injection, for tests only: LOTTO_TEST_FAULT="kill:<unit>" makes the task training <unit>
# SIGKILL its own worker process, "raise:<unit>" raise a RuntimeError (<unit> as `unit_label`
# writes it). The driver reads it when it makes the task, so that it reaches workers started
# before it was set; the task acts on it (`inject`).
FAULT_ENV = "LOTTO_TEST_FAULT"


def unit_label(key: dict) -> str:
    """'seed=0,round=1,variant=reinit': a unit's key in one line (failures, the fault hook)."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in key.items())


def injected_fault(key: dict) -> str | None:
    """The fault LOTTO_TEST_FAULT asks of the unit `key`: "kill", "raise" or None."""
    kind, _, unit = os.environ.get(FAULT_ENV, "").partition(":")
    return kind if unit and unit == unit_label(key) else None


def inject(fault: str | None) -> None:
    """In a task: fail the way `injected_fault` said (tests only)."""
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault is not None:
        raise RuntimeError(f"injected fault ({FAULT_ENV})")

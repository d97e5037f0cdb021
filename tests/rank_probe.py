"""``geoseg`` with what each training rank saw recorded, for the DDP tests (test code only).

Run as ``python tests/rank_probe.py <geoseg arguments>`` with ``RANK_PROBE_DIR`` set: every
training process (spawned by ``--devices N`` or started by torchrun) writes
``rank<R>.json`` there: a hash of its first training batch and of the weights it ended with.
The patches are applied at import, so processes spawned from this script get them too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from geoseg import train


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names and values (to compare weights across processes)."""
    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


_to_device = train._Trainer._to_device
_finish = train._Trainer.finish


def _to_device_seen(self: Any, batch: dict[str, Any]) -> Any:
    if not hasattr(self, "probe_first_batch"):  # the first call is the first training batch
        image = batch["image"].detach().cpu().contiguous().numpy().tobytes()
        self.probe_first_batch = hashlib.sha1(image).hexdigest()[:16]
    return _to_device(self, batch)


def _finish_recorded(self: Any, epochs_run: int) -> Any:
    folder = Path(os.environ["RANK_PROBE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": self.dist.rank,
        "world_size": self.dist.world_size,
        "first_batch": getattr(self, "probe_first_batch", ""),
        "weights": weights_hash(self.bare_model.state_dict()),  # before best.ckpt is reloaded
    }
    (folder / f"rank{self.dist.rank}.json").write_text(json.dumps(record))
    return _finish(self, epochs_run)


if os.environ.get("RANK_PROBE_DIR"):  # not when a test imports weights_hash from here
    train._Trainer._to_device = _to_device_seen  # type: ignore[method-assign]
    train._Trainer.finish = _finish_recorded  # type: ignore[method-assign]

if __name__ == "__main__":
    from geoseg.cli.main import run

    run()

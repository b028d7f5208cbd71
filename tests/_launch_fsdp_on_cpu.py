"""Runs a script under `accelerate launch --use_fsdp` on CPU processes (gloo): `accelerate launch ... --use_fsdp
tests/_launch_fsdp_on_cpu.py SCRIPT ARGS...`.

accelerate 1.15 turns FSDP on only for GPU-like devices: with `ACCELERATE_USE_CPU=1` its state becomes MULTI_CPU and
the FSDP settings are silently dropped (the run is plain DDP). torch's FSDP2 itself works on CPU with gloo, so this
launcher changes exactly that one decision (MULTI_CPU + `ACCELERATE_USE_FSDP` -> FSDP with the plugin from the
launch flags); everything else (`prepare`, `fully_shard`, `get_state_dict`, `save_state` / `load_state`) is
accelerate's own code.
"""

import os
import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = accelerate.state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
        if self._mixed_precision != "no":
            plugin.set_mixed_precision(self._mixed_precision)
        self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, plugin


if __name__ == "__main__":
    accelerate.state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")

"""Runs a training script with test-only changes, switched on by environment variables:

- `PATCH_KILL_AFTER_CHECKPOINT=N`: kill -9 right after `checkpoint-N` is complete;
- `PATCH_KILL_DURING_SAVE=N`: the N-th `Accelerator.save_state` call writes part of a file, then kill -9;
- `PATCH_WITHOUT_CHECKPOINT_HOOKS=1`: no save/load hooks, so checkpoints are accelerate's own format (as the script
  wrote them before it had the hooks).

    python tests/_patched_train.py training_scripts/train_syncdreamer.py ARGS...
"""

import os
import runpy
import signal
import sys
from pathlib import Path

from accelerate import Accelerator

import syncdreamer_hf.training

if __name__ == "__main__":
    if os.environ.get("PATCH_KILL_AFTER_CHECKPOINT"):
        kill_after, save_checkpoint = (
            int(os.environ["PATCH_KILL_AFTER_CHECKPOINT"]),
            syncdreamer_hf.training.save_checkpoint,
        )

        def save_checkpoint_then_die(accelerator, output_dir, global_step, *args, **kwargs):
            final = save_checkpoint(accelerator, output_dir, global_step, *args, **kwargs)
            if global_step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return final

        syncdreamer_hf.training.save_checkpoint = save_checkpoint_then_die
    if os.environ.get("PATCH_KILL_DURING_SAVE"):
        kill_at, calls, save_state = int(os.environ["PATCH_KILL_DURING_SAVE"]), [], Accelerator.save_state

        def save_state_then_die(self, output_dir=None, **kwargs):
            calls.append(output_dir)
            if len(calls) == kill_at:
                Path(output_dir, "model.safetensors").write_bytes(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
            return save_state(self, output_dir, **kwargs)

        Accelerator.save_state = save_state_then_die
    if os.environ.get("PATCH_WITHOUT_CHECKPOINT_HOOKS"):
        syncdreamer_hf.training.register_checkpoint_hooks = lambda accelerator, base_pipeline: None
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")

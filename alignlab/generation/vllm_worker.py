"""The part of `alignlab vllm-serve` that runs inside vLLM's worker process, where the model is.

vLLM's OpenAI server runs its engine in other processes (the engine core, and under it the worker
that holds the model), so the server's HTTP process cannot touch the weights. vLLM lets a server
mix methods into its worker class (`worker_extension_cls`) and call them by name from the HTTP
process (`engine_client.collective_rpc`), as TRL's `trl vllm-serve` does: these are those methods.
The engine core runs them between scheduler steps, so no decoding happens while one runs.

A failed update (a trainer that died mid-broadcast, a tensor vLLM refused) leaves the group torn
down and the weights reloaded from the model's files: a model half of whose tensors are new is
neither the trainer's policy nor the served model, and the next run starts with `/weights/init`
and pushes every weight before its first rollout anyway.
"""

from __future__ import annotations

import logging

from alignlab.generation import weight_sync

log = logging.getLogger("vllm.alignlab")  # under vLLM's logger: its lines carry the worker's process name

EXTENSION = f"{__name__}.WeightSyncExtension"


class WeightSyncExtension:
    """Mixed into vLLM's worker class; `self` is the worker (`self.model_runner`, `self.device`).
    vLLM refuses an extension whose names clash with the worker's: every name here starts `alignlab_`."""

    def alignlab_join_weights(self, host: str, port: int, backend: str, timeout_s: float) -> None:
        """Leave any previous trainer's group and join this one as rank 1 (the trainer hosts its store)."""
        self.alignlab_leave_weights()
        self.alignlab_group = weight_sync.weight_group(host, port, 1, backend, timeout_s=timeout_s)

    def alignlab_leave_weights(self) -> None:
        group = getattr(self, "alignlab_group", None)
        self.alignlab_group = None
        if group is not None:
            try:
                group.shutdown()
            except Exception as exc:  # a group whose peer is gone may not shut down cleanly; it is dropped anyway
                log.debug("weight group shutdown: %s", exc)

    def alignlab_receive_weights(self, specs: list, backend: str) -> int:
        """Receive `specs` [(name, dtype, shape)] over the group, loading each tensor as it arrives."""
        group = getattr(self, "alignlab_group", None)
        if group is None:
            raise RuntimeError("no weight group: POST /weights/init first")
        device = self.device if backend == "nccl" else "cpu"
        try:
            weight_sync.load_streamed(group, specs, device, self.alignlab_load)
        except BaseException:
            self.alignlab_leave_weights()
            log.warning("weight update failed: group left; reloading the weights from the model's files")
            self.model_runner.reload_weights()
            raise
        return len(specs)

    def alignlab_load(self, weights) -> None:
        """(checkpoint name, tensor) pairs into the model, in place: `reload_weights` where the runner has it
        (the CPU backend needs it: it repacks linear weights for oneDNN after loading), else the model's loader."""
        runner = self.model_runner
        if hasattr(runner, "reload_weights"):
            runner.reload_weights(weights_iterator=weights)
        else:
            runner.model.load_weights(weights)

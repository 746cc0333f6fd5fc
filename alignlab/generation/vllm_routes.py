"""alignlab's routes on vLLM's server app: what GRPO's server mode needs beside vLLM's OpenAI routes.

GET /info: the model's shape (checked against the policy) and length.
POST /generate: token-id prompts and sampling settings -> completions and their sampled-token log-probs.
POST /weights/init: join the trainer's weight group (`alignlab.generation.weight_sync`).
POST /weights/update: receive the listed tensors over that group, loading each as it arrives.
POST /weights/result: wait for a weight operation and report how it ended.

A weight operation is accepted or refused at once (4xx with a message: a tensor list that does not
match the model, no group yet, another operation running), and then runs in the background, with
/weights/result for its outcome. The trainer takes part in the group's collectives after the
accepting reply, so a refused request never leaves it waiting at a broadcast nobody receives.

One weight operation at a time, and never during generation: an operation waits for running
generations (ours, and vLLM's /v1 requests, which the engine finishes before it pauses) and new
ones wait for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from alignlab.generation import weight_sync
from alignlab.generation.serve_guard import Limits
from alignlab.generation.vllm import draw_seed, request_seed

log = logging.getLogger("alignlab")


class Gate:
    """Any number of generations at once, or one weight operation alone. An operation waits for the
    running generations to end; generations that arrive meanwhile wait for the operation."""

    def __init__(self):
        self.changed = asyncio.Condition()
        self.generations, self.operating = 0, False

    @asynccontextmanager
    async def generation(self):
        async with self.changed:
            await self.changed.wait_for(lambda: not self.operating)
            self.generations += 1
        try:
            yield
        finally:
            async with self.changed:
                self.generations -= 1
                self.changed.notify_all()

    @asynccontextmanager
    async def operation(self):
        async with self.changed:
            await self.changed.wait_for(lambda: not self.operating)
            self.operating = True  # from here new generations wait
            await self.changed.wait_for(lambda: self.generations == 0)
        try:
            yield
        finally:
            async with self.changed:
                self.operating = False
                self.changed.notify_all()


class GenerateRequest(BaseModel):
    prompts: list[list[int]]
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: Optional[int] = None


class InitRequest(BaseModel):
    host: str
    port: int
    backend: str = "gloo"


class UpdateRequest(BaseModel):
    tensors: list
    backend: str = "gloo"


class ResultRequest(BaseModel):
    op: int


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class ServerState:
    """What the routes share: the engine client, the model's facts and the weight operations."""

    def __init__(self, engine, *, info: dict, weights: dict[str, list[int]], vocab_size: int, max_model_len: int,
                 stop_ids: list[int], limits: Limits, seed: int, group_timeout_s: float = 300.0):
        self.engine, self.info, self.weights, self.limits = engine, info, weights, limits
        self.vocab_size, self.max_model_len, self.stop_ids, self.seed = vocab_size, max_model_len, stop_ids, seed
        self.group_timeout_s = group_timeout_s
        self.gate, self.draws, self.ops = Gate(), itertools.count(1), itertools.count(1)
        self.joined, self.busy, self.last = False, False, (0, None)

    def generate_problem(self, r: GenerateRequest) -> Optional[str]:
        limits = self.limits
        if not 1 <= len(r.prompts) <= limits.max_prompts:
            return f"{len(r.prompts)} prompts: send 1 to {limits.max_prompts} (the server's --max-prompts)"
        if not 1 <= r.n <= limits.max_n:
            return f"n = {r.n}: send 1 to {limits.max_n} (the server's --max-n)"
        if r.max_tokens < 1:
            return f"max_tokens = {r.max_tokens}: send at least 1"
        if not r.greedy and (r.temperature <= 0 or not 0 < r.top_p <= 1 or r.top_k < 0):
            return f"temperature {r.temperature}, top_p {r.top_p}, top_k {r.top_k}: need > 0, (0, 1] and >= 0"
        for index, prompt in enumerate(r.prompts):
            if not prompt:
                return f"prompt {index} is empty"
            if len(prompt) + r.max_tokens > self.max_model_len:
                return (f"prompt {index}: {len(prompt)} tokens + max_tokens {r.max_tokens} is over the model length "
                        f"{self.max_model_len} (the server's --max-model-len)")
            if min(prompt) < 0 or max(prompt) >= self.vocab_size:
                return f"prompt {index}: token ids must lie in [0, {self.vocab_size})"
        return None

    async def generate(self, r: GenerateRequest) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        seed = draw_seed(self.seed, next(self.draws)) if r.seed is None else r.seed
        batch = uuid.uuid4().hex

        async def one(index: int, prompt: list[int]):
            params = SamplingParams(
                n=r.n, temperature=0.0 if r.greedy else r.temperature, top_p=1.0 if r.greedy else r.top_p,
                top_k=0 if r.greedy or not r.top_k else r.top_k, max_tokens=r.max_tokens, logprobs=0,
                detokenize=False, stop_token_ids=self.stop_ids, seed=request_seed(seed, index, r.n),
                output_kind=RequestOutputKind.FINAL_ONLY)
            final = None
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=prompt), params,
                                                     f"alignlab-{batch}-{index}"):
                final = output
            return final

        async with self.gate.generation():
            tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(r.prompts)]
            try:
                outputs = await asyncio.gather(*tasks)
            except BaseException:  # one failed (or the client left): vLLM aborts the rest as they are cancelled
                for task in tasks:
                    task.cancel()
                raise
        choices = [choice for output in outputs for choice in output.outputs]
        return {"completions": [list(c.token_ids) for c in choices],
                "logprobs": [[next(iter(d.values())).logprob for d in (c.logprobs or [])] for c in choices]}

    def start(self, name: str, work) -> int:
        """Run `work()` (a coroutine function) as weight operation N in the background; N for /weights/result."""
        op = next(self.ops)
        self.busy = True

        async def run():
            try:
                async with self.gate.operation():
                    return await work()
            except Exception as exc:
                log.error("vllm-serve: %s (operation %d) failed: %s", name, op, exc)
                raise
            finally:
                self.busy = False

        task = asyncio.create_task(run())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged above, even if nobody asks
        self.last = (op, task)
        return op

    async def join(self, r: InitRequest) -> dict:
        self.joined = False
        await self.engine.collective_rpc("alignlab_join_weights", args=(r.host, r.port, r.backend, self.group_timeout_s))
        self.joined = True
        log.info("vllm-serve: joined the weight group at %s:%d (%s)", r.host, r.port, r.backend)
        return {"ok": True}

    async def receive(self, r: UpdateRequest) -> dict:
        try:
            await self.engine.pause_generation(mode="wait", clear_cache=False)  # vLLM's own requests end first
            await self.engine.collective_rpc("alignlab_receive_weights", args=(r.tensors, r.backend))
        except Exception:
            self.joined = False  # the worker left the group and reloaded the model's files
            raise
        finally:
            await self.engine.reset_prefix_cache()  # cached keys and values belong to the old weights
            await self.engine.resume_generation()
        return {"ok": True, "tensors": len(r.tensors)}


def add_routes(app: FastAPI, state: ServerState) -> None:
    router = APIRouter()

    @router.get("/info")
    async def info():
        return state.info

    @router.post("/generate")
    async def generate(request: GenerateRequest):
        problem = state.generate_problem(request)
        if problem:
            return _error(400, problem)
        return await state.generate(request)

    @router.post("/weights/init")
    async def weights_init(request: InitRequest):
        if request.backend not in ("gloo", "nccl") or not 0 < request.port < 65536 or not request.host:
            return _error(400, "send host, port (1-65535) and backend (gloo or nccl)")
        if state.busy:
            return _error(409, "a weight operation is running: one trainer per server, one update at a time")
        return {"op": state.start("join", lambda: state.join(request))}

    @router.post("/weights/update")
    async def weights_update(request: UpdateRequest):
        problems = weight_sync.spec_problems(request.tensors, state.weights)
        if problems:
            return _error(400, "the tensor list does not match the served model: " + "; ".join(problems))
        if request.backend not in ("gloo", "nccl"):
            return _error(400, f"backend {request.backend}: use gloo or nccl")
        if state.busy:
            return _error(409, "a weight operation is running: one trainer per server, one update at a time")
        if not state.joined:
            return _error(409, "no weight group: POST /weights/init first (again after a failed update)")
        return {"op": state.start("update", lambda: state.receive(request)), "tensors": len(request.tensors)}

    @router.post("/weights/result")
    async def weights_result(request: ResultRequest):
        op, task = state.last
        if request.op != op or task is None:
            return _error(404, f"no weight operation {request.op} (the latest is {op})")
        try:
            return await asyncio.shield(task)
        except Exception as exc:
            return _error(500, f"{type(exc).__name__}: {exc}")

    app.include_router(router)

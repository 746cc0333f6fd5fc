"""`alignlab vllm-serve MODEL`: vLLM's own OpenAI-compatible server (FastAPI + uvicorn) with
alignlab's routes added, for generation on other GPUs or another machine (`grpo.vllm_mode=server`),
LLM judges, `alignlab eval`/`sample` over HTTP and anyone's OpenAI client.

Routes: vLLM's (/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics, ...) and
alignlab's (/info, /generate, /weights/init, /weights/update, /weights/result: `vllm_routes`).
Every route needs the shared token when one is set, and one must be set to listen beyond loopback
(`serve_guard`). The weights are received inside vLLM's worker process (`vllm_worker`), so the engine
keeps vLLM's own process layout (API server, engine core, workers) on CUDA and CPU builds alike.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Optional

from alignlab.errors import AlignlabError
from alignlab.generation.serve_guard import TOKEN_VARIABLES, BoundedBody, Limits, TokenAuth, check_bind, resolve_token

log = logging.getLogger("alignlab")


def model_shape(config) -> dict:
    """What must match between the server's model and the policy."""
    return {key: getattr(config, key, None) for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")}


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          limits: Optional[Limits] = None, dtype: str = "auto", max_model_len: int = 2048,
          gpu_memory_utilization: float = 0.9, seed: int = 0) -> None:
    """Serve `model` (hub id or dir) until interrupted. Refuses, before any engine starts, to listen beyond
    loopback without a token (`api_key`, else ALIGNLAB_VLLM_API_KEY / VLLM_API_KEY)."""
    token = resolve_token(api_key)
    check_bind(host, token)
    from alignlab.generation.vllm import INSTALL_HINT, vllm_available
    from alignlab.model.loading import ensure_tiny_model, resolve_model_path

    if not vllm_available():
        raise AlignlabError(INSTALL_HINT)
    path = resolve_model_path(ensure_tiny_model(model))
    for name in TOKEN_VARIABLES:  # vLLM would apply VLLM_API_KEY to its /v1 routes alone; the engine needs neither
        os.environ.pop(name, None)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s alignlab %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    args = vllm_args(path, name=model, host=host, port=port, dtype=dtype, max_model_len=max_model_len,
                     gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    import uvloop

    uvloop.run(_serve(args, token, limits or Limits(), path))


def vllm_args(path: str, *, name: str, host: str, port: int, dtype: str, max_model_len: int,
              gpu_memory_utilization: float, seed: int):
    """vLLM's server arguments (its own parser, so its defaults and checks apply), with alignlab's worker
    extension and the processed (temperature-scaled) log-probs the trainer compares with its own."""
    import torch
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from alignlab.generation.vllm_worker import EXTENSION

    argv = ["--model", path, "--served-model-name", name, "--host", host, "--port", str(port), "--dtype", dtype,
            "--max-model-len", str(max_model_len), "--seed", str(seed), "--logprobs-mode", "processed_logprobs",
            "--worker-extension-cls", EXTENSION]
    if torch.cuda.is_available():
        argv += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    else:
        argv += ["--enforce-eager"]  # no CUDA graphs to capture on a CPU
        # vLLM's CPU build otherwise starts its one worker in a third process (API server, engine core, worker),
        # each importing torch and vLLM anew: on a busy machine that process alone took 80 s of start-up. With
        # it off the worker runs in the engine core's process, as on one GPU (the colocated engine does the same).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    validate_parsed_serve_args(args)
    return args


async def _serve(args, token: Optional[str], limits: Limits, path: str) -> None:
    """vLLM's `run_server`, with alignlab's routes and guards added to its app before it serves."""
    from vllm import envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    def interrupt_start(*_):  # SIGTERM while the engine starts (before uvicorn's own handlers)
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, interrupt_start)
    listen_address, sock = setup_server(args, reuse_port=False)  # the port is taken before the engine starts
    async with build_async_engine_client(args) as engine:
        tasks = await engine.get_supported_tasks()
        app = build_app(args, tasks, engine.model_config)
        add_alignlab(app, engine, path, args, token, limits)
        await init_app_state(engine, app.state, args, tasks)
        print(f"vllm-serve: {args.served_model_name[0]} on {listen_address} "
              f"({'token required on every route' if token else 'no token: loopback only'}; Ctrl-C to stop)",
              flush=True)
        shutdown = await serve_http(app, sock=sock, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                                    access_log=not args.disable_uvicorn_access_log,
                                    timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE)
    try:
        await shutdown
    finally:
        sock.close()


def add_alignlab(app, engine, path: str, args, token: Optional[str], limits: Limits) -> None:
    """alignlab's routes, and the guards around the whole app: the token first, then the body's size."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from alignlab.generation.vllm_routes import ServerState, add_routes
    from alignlab.model.loading import stop_token_ids

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):  # names and shapes of the weights a trainer may send, without their memory
        weights = {name: list(t.shape) for name, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        generation_config = None
    max_model_len = engine.model_config.max_model_len
    state = ServerState(engine, info={"model": args.served_model_name[0], "shape": model_shape(config),
                                      "max_model_len": max_model_len},
                        weights=weights, vocab_size=config.vocab_size, max_model_len=max_model_len,
                        stop_ids=stop_token_ids(AutoTokenizer.from_pretrained(path), generation_config),
                        limits=limits, seed=args.seed)
    add_routes(app, state)
    from starlette.middleware import Middleware

    # Outermost of all (first in the list), so nothing of vLLM's runs for a request without the token. vLLM's
    # app is already built (SageMaker's bootstrap builds its middleware stack), so the stack is rebuilt.
    guards = ([Middleware(TokenAuth, token=token)] if token is not None else []) + [Middleware(BoundedBody, limits=limits)]
    app.user_middleware[:0] = guards
    app.middleware_stack = app.build_middleware_stack()

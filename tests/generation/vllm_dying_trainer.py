"""A trainer that dies in the middle of a weight push to `alignlab vllm-serve`: it joins the weight group,
has its update accepted, broadcasts half of the tensors and is then killed (SIGKILL: no clean-up at all).

python vllm_dying_trainer.py HOST:PORT MODEL_DIR   (the token comes from ALIGNLAB_VLLM_API_KEY)
"""

import os
import signal
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.generation import weight_sync
from alignlab.generation.vllm_client import VLLMServerClient

send = weight_sync.send


def send_half_then_die(group, tensors):
    tensors = list(tensors)
    send(group, tensors[: len(tensors) // 2])
    print(f"sent {len(tensors) // 2} of {len(tensors)} tensors; killed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    weight_sync.send = send_half_then_die
    address, model_dir = sys.argv[1:3]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    client = VLLMServerClient(address, AutoTokenizer.from_pretrained(model_dir), model.config, model.generation_config)
    client.load_weights(model)

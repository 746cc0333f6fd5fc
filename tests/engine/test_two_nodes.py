"""Two "nodes" on 127.0.0.1: `accelerate launch --multi_gpu --num_machines 2 --machine_rank 0|1` (one process
each, torchrun under accelerate, gloo on a CPU) train like one process with the same global batch and write one
run directory; `accelerate launch --cpu` for several machines, which would start each process alone, is refused."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import base_args
from launch import assert_same, assert_written_once, clean_env, free_port, run_ok

from conftest import train_records

ROOT = Path(__file__).resolve().parents[2]


def two_nodes(argv: list, cwd: Path) -> list[str]:
    """Both nodes' launchers at once (as on two machines); returns their outputs."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
                               "-m", "alignlab", *[str(a) for a in argv]],
                              cwd=cwd, env=clean_env(None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return outputs


FAKE_SRUN = """#!/bin/bash
# srun on two "nodes" of this machine: the step's command once per node, SLURM_NODEID 0 and 1, at once.
while [[ $1 == --* ]]; do shift; done
for node in 0 1; do SLURM_NODEID=$node "$@" > "node$node.log" 2>&1 & done
status=0; for job in $(jobs -p); do wait $job || status=1; done
cat node0.log node1.log; exit $status
"""


def slurm_template_on_two_local_nodes(argv: list, cwd: Path) -> list[str]:
    """configs/slurm/multi_node.sbatch as shipped, its EDIT lines set, under a stand-in srun/scontrol that
    start its per-node launch line on two "nodes" of 127.0.0.1."""
    command, *overrides = [str(a) for a in argv]
    config = cwd / "job.yaml"
    config.write_text(yaml.safe_dump(_nest(overrides)))
    template = (ROOT / "configs" / "slurm" / "multi_node.sbatch").read_text()
    template = re.sub(r"^COMMAND=\S+", f"COMMAND={command}", template, flags=re.M)
    template = re.sub(r"^CONFIG=\S+", f"CONFIG={config}", template, flags=re.M)
    bin_dir = cwd / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\necho 127.0.0.1\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    (cwd / "job.sbatch").write_text(template)
    env = {**clean_env(None), "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "1",
           "MAIN_PORT": str(free_port())}
    proc = subprocess.run(["bash", "job.sbatch"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [proc.stdout]


def _nest(overrides: list[str]) -> dict:
    nested: dict = {}
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = yaml.safe_load(value)
    return nested


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_two_nodes_train_like_one_process(command, tmp_path, tiny_model_dir, sft_train, prefs):
    """SFT through the shipped SLURM template's launch line, DPO through accelerate launch by hand."""
    data = sft_train if command == "sft" else prefs
    common = ["train.max_steps=3", "train.lr=3e-3", "train.save_every=3"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args(command, tiny_model_dir, data, one, "train.batch_size=4", *common))
    if command == "sft":
        argv = base_args(command, tiny_model_dir, data, two, "train.batch_size=2", *common)
        outputs = slurm_template_on_two_local_nodes([a for a in argv if not a.startswith("train.output_dir")], tmp_path)
        two = tmp_path / "runs" / "sft_7"  # the template's OUTPUT_DIR
    else:
        outputs = two_nodes(base_args(command, tiny_model_dir, data, two, "train.batch_size=2", *common), tmp_path)
    assert sum(output.count(f"done: {two.relative_to(tmp_path) if command == 'sft' else two}") for output in outputs) == 1
    assert "2 processes (data parallel)" in (two / "train.log").read_text()
    assert_written_once(two, 3)
    keys = ("loss", "grad_norm") + (("rewards/accuracies", "rewards/margins") if command == "dpo" else ())
    assert_same(train_records(one), train_records(two), keys)


def test_accelerate_cpu_launch_of_several_processes_is_refused(monkeypatch):
    from alignlab.engine.launch import check_launcher
    from alignlab.errors import AlignlabError

    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what its simple launcher exports for --num_machines 2
    with pytest.raises(AlignlabError, match="accelerate launch --multi_gpu"):
        check_launcher()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a real group (torchrun): fine
    check_launcher()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("MASTER_ADDR")  # one process, no group asked for: fine
    check_launcher()

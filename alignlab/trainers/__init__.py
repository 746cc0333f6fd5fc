"""The trainers, one module each (they never import each other), and the registry of training
commands that the CLI and `alignlab sweep` both dispatch through: command -> (module, function)."""

TRAINERS = {
    "sft": ("alignlab.trainers.sft", "train_sft"),
    "dpo": ("alignlab.trainers.dpo", "train_dpo"),
    "grpo": ("alignlab.trainers.grpo", "train_grpo"),
    "rm": ("alignlab.trainers.rm", "train_rm"),
    "distill": ("alignlab.trainers.distill", "train_distill"),
}

"""Models that score text: reward models (one-output sequence classifiers; `alignlab rm` trains them).

Used by trainers, iterate, pairs and eval, never the other way round. `heads` loads a classifier and
reads its score at each sequence's last real token; `reward_model.RewardModel` scores (prompt,
completion) texts with the reward model's own tokenizer and chat template.
"""

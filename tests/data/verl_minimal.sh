# The least a verl GRPO launch needs (verl 0.9.1): the model, the estimator, the GPUs, a rollout engine
# (rollout.name is '???' in ppo_trainer.yaml: required) and a micro batch (required unless use_dynamic_bsz).
# memplan --framework verl reads this file's equivalent (memplan.frameworks.presets.launch_file).
python3 -m verl.trainer.main_ppo \
    actor_rollout_ref.model.path=Qwen/Qwen2.5-7B \
    algorithm.adv_estimator=grpo \
    trainer.nnodes=1 \
    trainer.n_gpus_per_node=8 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1

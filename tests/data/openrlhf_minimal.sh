# The least an OpenRLHF 0.11 GRPO launch needs: the model, the estimator, the actor's GPUs. By default each
# model gets GPUs of its own, as many as the actor's: actor 4 + reference 4 (init_kl_coef 0.01) = 8 GPUs.
python3 -m openrlhf.cli.train_ppo_ray --actor.model_name_or_path Qwen/Qwen2.5-7B --actor.num_nodes 1 \
    --actor.num_gpus_per_node 4 --algo.advantage.estimator group_norm

# OpenRLHF 0.11 PPO on 8 GPUs, every model and the vLLM engines colocated (the README's hybrid-engine recipe)
python3 -m openrlhf.cli.train_ppo_ray \
   --actor.num_nodes 1 --actor.num_gpus_per_node 8 \
   --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --vllm.gpu_memory_utilization 0.6 --vllm.enable_sleep \
   --train.colocate_all --ds.enable_sleep \
   --actor.model_name_or_path meta-llama/Llama-3.1-8B-Instruct \
   --reward.model_name_or_path meta-llama/Llama-3.1-8B \
   --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable \
   --train.micro_batch_size 4 --train.batch_size 128 \
   --rollout.micro_batch_size 8 --rollout.batch_size 256 --rollout.n_samples_per_prompt 1 \
   --data.max_len 2048 --rollout.max_new_tokens 1024 \
   --algo.kl.init_coef 0.01 --algo.advantage.estimator gae --ds.packing_samples

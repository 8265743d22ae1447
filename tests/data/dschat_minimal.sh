# The least a DeepSpeed-Chat step-3 launch needs: the actor and critic (here the same architecture), and the
# hybrid engine every shipped training script enables (main.py leaves it off).
deepspeed main.py --actor_model_name_or_path meta-llama/Llama-2-7b-hf \
    --critic_model_name_or_path meta-llama/Llama-2-7b-hf --enable_hybrid_engine

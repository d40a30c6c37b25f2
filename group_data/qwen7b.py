"""Group qwen7b: Qwen2.5-VL-7B-Instruct, one server per host over all its GPUs.

Change a flag here and only this group's hosts restart, e.g. vllm_max_model_len = 16384.
"""

vlm_profile = "qwen7b"

"""Group qwen72b_awq: Qwen2.5-VL-72B-Instruct-AWQ, tensor parallel over the host's GPUs."""

vlm_profile = "qwen72b_awq"

"""vlmfleet: pyinfra deploys that bring GPU hosts to healthy Qwen2.5-VL servers under vLLM."""

__version__ = "0.1.0"

"""Example production fleet: replace the placeholder hosts and SSH data with yours.

    pyinfra inventories/prod.py deploys/vlm.py            # plan, confirm, apply
    pyinfra inventories/prod.py deploys/vlm.py --dry --diff
    pyinfra inventories/prod.py deploys/vlm.py --limit qwen7b
    pyinfra inventories/prod.py deploys/monitoring.py    # exporters everywhere, Prometheus on group monitoring
    pyinfra inventories/prod.py deploys/gateway.py       # HAProxy on group gateway, drain agents on servers

Groups select the model profile (group_data/<group>.py); host data here overrides group data.
"""

_ssh = {
    "ssh_user": "deploy",  # a sudo user with key auth on every GPU box
    "ssh_key": "~/.ssh/id_ed25519",
    "_sudo": True,
    # Pin the image: the digest you verified, e.g. from `docker buildx imagetools inspect vllm/vllm-openai:v0.33.0`.
    # PLACEHOLDER (all zeros): pulls fail until you put the real digest here.
    "vllm_image_digest": "sha256:" + "0" * 64,
    # The API key file on this (control) machine; uploaded 0600, never printed.
    "api_key_file": "secrets/api-key",
}

# Qwen2.5-VL-7B-Instruct, one server per host
qwen7b = [
    ("gpu-a10-01.example.internal", dict(_ssh)),
    ("gpu-a10-02.example.internal", dict(_ssh)),
]

# Qwen2.5-VL-72B-Instruct-AWQ, tensor parallel across the host's GPUs
qwen72b_awq = [
    ("gpu-a100-01.example.internal", dict(_ssh)),
]

# A small CPU host for the fleet's operations: Prometheus (deploys/monitoring.py) and one address per group
# (deploys/gateway.py: HAProxy; clients use http://ops-01.example.internal:8000 for qwen7b, :8001 for qwen72b_awq)
_ops = {k: v for k, v in _ssh.items() if k != "vllm_image_digest"}
monitoring = [("ops-01.example.internal", dict(_ops))]
gateway = [("ops-01.example.internal", dict(_ops))]

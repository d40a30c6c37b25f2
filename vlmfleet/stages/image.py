"""Stage 4, image: the vLLM image on the host, pulled once (through the configured mirror, by digest if pinned)."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy

from ..config import HostConfig
from ..facts import DockerImage
from .common import bounded_shell


@deploy("Image")
def image(cfg: HostConfig) -> list:
    """``docker pull`` the image unless the host already has it. A pinned ``vllm_image_digest`` is pulled and run
    as ``image@sha256:...``; a tag is pulled once (pin a digest to roll a moving tag forward). Returns the pull
    (the service restarts when it changed), or nothing when the image was there.

    + cfg: the host's configuration; ``cfg.image_ref`` is what is pulled, e.g. ``vllm/vllm-openai:v0.33.0``
    """
    ref = cfg.image_ref
    have = host.get_fact(DockerImage, ref=ref)
    if have:
        host.noop(f"image {ref} is already present ({have['id'][:19]})")
        return []
    return [bounded_shell(cfg, "pull_timeout_s", name=f"Pull {ref}", command=f"docker pull --quiet {shlex.quote(ref)}",
                          what=f"docker pull {ref}")]

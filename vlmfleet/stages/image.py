"""Stage 4, image: the vLLM image on the host, pulled once (through the configured mirror, by digest if pinned)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from ..facts import DockerImage
from ..settings import image_ref
from .common import host_settings, record_change


@deploy("Image")
def image() -> None:
    """``docker pull`` the image unless the host already has it. A pinned ``vllm_image_digest`` is pulled and run
    as ``image@sha256:...``; a tag is pulled once (pin a digest to roll a moving tag forward)."""
    ref = image_ref(host_settings())
    have = host.get_fact(DockerImage, ref=ref)
    if have:
        host.noop(f"image {ref} is already present ({have['id'][:19]})")
        return
    pull = server.shell(name=f"Pull {ref}", commands=[f"docker pull --quiet {ref}"])
    record_change("image", pull)

"""Where the lab looks for the guest image, and what it says when none is there."""

from __future__ import annotations

from pathlib import Path

from gateway.machines.image import CHECKOUT_IMAGE_DIR, IMAGE_ENV, image_dir, not_built


def test_the_checkout_image_unless_the_environment_names_a_folder(tmp_path: Path) -> None:
    assert image_dir({}) == CHECKOUT_IMAGE_DIR
    assert image_dir({IMAGE_ENV: "  "}) == CHECKOUT_IMAGE_DIR
    assert image_dir({IMAGE_ENV: str(tmp_path)}) == tmp_path.resolve()


def test_the_message_says_what_to_do_where_it_looked(tmp_path: Path) -> None:
    # This test runs in a checkout: make images is the way.
    assert not_built(CHECKOUT_IMAGE_DIR) == (
        f"no guest image in {CHECKOUT_IMAGE_DIR}: run `make images` in the lab's checkout"
    )
    named = not_built(tmp_path)
    assert named.startswith(f"no guest image in {tmp_path} ({IMAGE_ENV}): it needs vmlinux")

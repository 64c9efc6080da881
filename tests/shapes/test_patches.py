"""The patch table behind the tokenizer: small, closed, exact round trips, nearest fallback."""

from __future__ import annotations

import numpy as np
import pytest

from maskfocus.shapes.patches import PATCH, image_patches, patch_ids, patch_table, patches_to_images
from maskfocus.shapes.render import render_batch
from maskfocus.shapes.scene import random_scene
from maskfocus.shapes.tiny_model import CODEBOOK_SIZE
from maskfocus.shapes.world import BACKGROUND


@pytest.fixture(scope="module")
def table():
    return patch_table(num_scenes=1500, seed=0)


def test_the_table_is_small_sorted_by_frequency_and_starts_with_background(table):
    assert len(table) <= CODEBOOK_SIZE
    assert len(np.unique(table, axis=0)) == len(table)
    assert (table[0].reshape(-1, 3) == np.array(BACKGROUND)).all()


def test_the_table_is_a_pure_function_of_its_seed():
    assert np.array_equal(patch_table(200, seed=3), patch_table(200, seed=3))


def test_the_table_equals_a_count_of_every_patch_sorted_by_frequency_then_bytes():
    """Against a slow reference: count each patch's bytes, order by count (descending), ties by the bytes."""
    from collections import Counter

    rng = np.random.default_rng(3)  # as patch_table draws its scenes
    images = render_batch([random_scene(rng) for _ in range(200)])
    counts = Counter(row.tobytes() for row in image_patches(images).reshape(-1, PATCH * PATCH * 3))
    ordered = sorted(counts, key=lambda patch: (-counts[patch], patch))
    expected = np.frombuffer(b"".join(ordered), dtype=np.uint8).reshape(len(ordered), -1)
    assert len(set(counts.values())) > 1  # the order by count means something
    assert np.array_equal(patch_table(200, seed=3), expected)


def test_unseen_scenes_hold_only_patches_of_the_table(table):
    images = render_batch([random_scene(np.random.default_rng(99)) for _ in range(200)])
    known = {row.tobytes() for row in table}
    assert all(row.tobytes() in known for row in image_patches(images).reshape(-1, table.shape[1]))


def test_ids_round_trip_renders_exactly(table):
    images = render_batch([random_scene(np.random.default_rng(7)) for _ in range(20)])
    ids = patch_ids(images, table)
    assert ids.shape == (20, 64 // PATCH, 64 // PATCH)
    assert np.array_equal(patches_to_images(ids, table), images)


def test_image_patches_agrees_with_a_loop():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    patches = image_patches(images)
    for n in range(2):
        for i in range(2):
            for j in range(3):
                expected = images[n, i * PATCH : (i + 1) * PATCH, j * PATCH : (j + 1) * PATCH].reshape(-1)
                assert np.array_equal(patches[n, i, j], expected)


def test_an_unknown_patch_takes_the_nearest_entry(table):
    image = np.full((1, 4, 4, 3), BACKGROUND, dtype=np.uint8)
    image[0, 0, 0] = (BACKGROUND[0] + 3, BACKGROUND[1], BACKGROUND[2])  # one pixel off the background patch
    assert patch_ids(image, table)[0, 0, 0] == 0


def test_image_sides_must_be_multiples_of_the_patch():
    with pytest.raises(ValueError, match="multiples of 4"):
        image_patches(np.zeros((1, 6, 8, 3), dtype=np.uint8))

"""The null family: unchanged by default; a simulated device and render-like pictures on demand."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from models.base import GenerationParams
from models.null import NullImageModel
from models.registry import load_model
from pipeline.stages.image import encode_image

# sha256 of the default null images for seeds (0, 1, 2, 2**40) at 72x40, before device options
DEFAULT_SHA = "82fcf424101314b0297aa555f8defa0f78308e57e2108fcbb37bad4fe200770c"
SEEDS = [0, 1, 2, 2**40]


def test_the_default_null_images_are_byte_identical_to_before():
    for model in (NullImageModel(), NullImageModel({}), load_model("null", None)):
        images = model.generate(None, SEEDS, GenerationParams(72, 40))
        assert hashlib.sha256(images.tobytes()).hexdigest() == DEFAULT_SHA


def test_the_device_time_sleeps_per_batch_with_the_gil_released():
    model = NullImageModel({"device_ms_per_image": 50, "images": "blocks"})
    ticks, done = [0], threading.Event()

    def spin():  # runs only while the generating thread lets go of the GIL
        while not done.is_set():
            ticks[0] += 1
    spinner = threading.Thread(target=spin)
    spinner.start()
    start, thread_cpu = time.perf_counter(), time.thread_time()
    images = model.generate(None, SEEDS, GenerationParams(72, 40))
    wall, used = time.perf_counter() - start, time.thread_time() - thread_cpu
    done.set()
    spinner.join()
    assert wall >= 4 * 0.050  # batch × device_ms
    assert used < wall / 2 and ticks[0] > 1000  # asleep, and the other thread ran
    assert hashlib.sha256(images.tobytes()).hexdigest() == DEFAULT_SHA  # images: blocks


def test_drawing_happens_inside_the_device_time_not_after_it(monkeypatch):
    import models.null as null

    clock, slept = iter([10.0, 10.03]), []  # the draw took 30 ms of the batch's 200 ms
    monkeypatch.setattr(null.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(null.time, "sleep", slept.append)
    model = NullImageModel({"device_ms_per_image": 50, "images": "blocks"})
    images = model.generate(None, SEEDS, GenerationParams(72, 40))
    assert slept == [pytest.approx(0.17)]
    assert hashlib.sha256(images.tobytes()).hexdigest() == DEFAULT_SHA


def test_render_pictures_compress_like_a_diffusion_models_output():
    model = NullImageModel({"device_ms_per_image": 1})  # a device time implies render
    params = GenerationParams(512, 512)
    model.warmup(params)
    images = model.generate(None, [7, 8, 9, 7], params)
    assert images.shape == (4, 512, 512, 3) and images.dtype == np.uint8
    assert (images[0] == images[3]).all() and not (images[0] == images[1]).all()
    assert len({hashlib.sha256(im.tobytes()).digest() for im in images}) == 3
    png = np.mean([len(encode_image(im, "png")) for im in images[:3]])
    jpeg = np.mean([len(encode_image(im, "jpeg", 95)) for im in images[:3]])
    # DiffusionDB's Stable Diffusion PNGs average ~580 KB: within 2x either way
    assert 290_000 < png < 1_160_000, png
    assert 50_000 < jpeg < 200_000, jpeg  # a 512² render at q95 is ~60-150 KB
    # smooth, not white noise: neighbouring pixels differ by a few levels on average
    step = np.abs(np.diff(images[0].astype(np.int16), axis=1)).mean()
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3)).astype(np.int16)
    assert step < 12 < np.abs(np.diff(noise, axis=1)).mean()
    assert len(encode_image(noise.astype(np.uint8), "jpeg", 95)) > 2 * jpeg


def test_unknown_or_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown to the null family"):
        NullImageModel({"device_ms": 3})
    with pytest.raises(ValueError, match="images 'blocks' or 'render'"):
        NullImageModel({"images": "noise"})

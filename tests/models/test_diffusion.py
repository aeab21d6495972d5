"""The diffusers backend: a tiny SD pipeline saved and loaded back offline, plus in-memory
tiny SDXL, SD3 and FLUX pipelines for the other families."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_pipelines
import torch

from models.base import GenerationParams
from models.diffusion import DiffusersEmbeds, DiffusersImageModel
from models.tiny_sd import build_tiny_sd_pipeline

PROMPTS = ["a red circle on a blue background", "a green square", "卡通风格的人物"]
SEEDS = [11, 22, 33]
PARAMS = GenerationParams(width=64, height=64, steps=3, guidance_scale=6.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a busy machine idle-spinning threads
    # make them many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return build_tiny_sd_pipeline(str(tmp_path_factory.mktemp("tiny_sd")))


@pytest.fixture(scope="module")
def model(model_path) -> DiffusersImageModel:
    return DiffusersImageModel.from_pretrained(model_path)


def draw(model, prompts, seeds, params=PARAMS, negatives=None) -> np.ndarray:
    return model.generate(model.encode_prompt(prompts, negatives), seeds, params)


def test_round_trip_draws_uint8_images(model, model_path):
    images = draw(model, PROMPTS, SEEDS)
    assert model.model_id == model_path and model.native_size is None
    assert type(model.pipe).__name__ == "StableDiffusionPipeline"
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert images.std() > 1  # not a blank canvas


def test_matches_a_plain_pipeline_call(model):
    generator = torch.Generator("cpu").manual_seed(SEEDS[0])
    plain = model.pipe(PROMPTS[0], generator=generator, num_inference_steps=3,
                       guidance_scale=6.0, width=64, height=64, output_type="np").images
    np.testing.assert_array_equal(draw(model, PROMPTS[:1], SEEDS[:1]),
                                  (plain * 255).round().astype(np.uint8))


def test_image_depends_only_on_its_prompt_and_seed(model):
    embeds = model.encode_prompt(PROMPTS)
    batch = model.generate(embeds, SEEDS, PARAMS)
    for i in range(3):
        alone = model.generate(embeds.select([i]), [SEEDS[i]], PARAMS)
        encoded_alone = draw(model, [PROMPTS[i]], [SEEDS[i]])
        np.testing.assert_array_equal(batch[i], alone[0])
        np.testing.assert_array_equal(batch[i], encoded_alone[0])
    assert not np.array_equal(batch[0], draw(model, PROMPTS[:1], [SEEDS[0] + 1])[0])


def test_batched_mode_still_draws_noise_per_sample(model):
    fast = DiffusersImageModel(model.pipe, model.model_id, batch_invariant=False)
    embeds = model.encode_prompt(PROMPTS)
    batched = fast.generate(embeds, SEEDS, PARAMS).astype(int)
    # Only float rounding may differ from one-at-a-time drawing, never the noise.
    assert np.abs(batched - model.generate(embeds, SEEDS, PARAMS)).max() <= 1


def test_negative_prompt_steers_only_under_guidance(model):
    plain, steered = ([None], ["blurry, low quality"])
    with_cfg = [draw(model, PROMPTS[:1], SEEDS[:1], negatives=n) for n in (plain, steered)]
    assert not np.array_equal(*with_cfg)
    no_cfg = GenerationParams(width=64, height=64, steps=3, guidance_scale=1.0)
    without = [draw(model, PROMPTS[:1], SEEDS[:1], no_cfg, n) for n in (plain, steered)]
    np.testing.assert_array_equal(*without)


def test_missing_negative_prompt_is_the_empty_string(model):
    none = model.encode_prompt(PROMPTS[:2], [None, "ugly"])
    empty = model.encode_prompt(PROMPTS[:2], ["", "ugly"])
    assert torch.equal(none.negative_prompt_embeds, empty.negative_prompt_embeds)
    assert not torch.equal(none.negative_prompt_embeds[0], none.negative_prompt_embeds[1])
    assert none.pooled_prompt_embeds is None  # SD 1.x/2.x has no pooled states


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_scheduler_is_chosen_by_class_name(model, model_path, name):
    switched = DiffusersImageModel.from_pretrained(model_path, scheduler=name)
    assert type(switched.pipe.scheduler).__name__ == name
    assert not np.array_equal(draw(switched, PROMPTS[:1], SEEDS[:1]),
                              draw(model, PROMPTS[:1], SEEDS[:1]))


def test_unknown_scheduler_names_the_compatible_ones(model):
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        model.set_scheduler("NoSuchScheduler")


def test_select_and_concat_rebuild_batches(model):
    embeds = model.encode_prompt(PROMPTS, [None, "dark", None])
    picked = embeds.select([2, 0, 2])
    assert torch.equal(picked.prompt_embeds[1], embeds.prompt_embeds[0])
    assert torch.equal(picked.negative_prompt_embeds[0], embeds.negative_prompt_embeds[2])
    rebuilt = DiffusersEmbeds.concat([embeds.select([0]), embeds.select([1, 2])])
    assert torch.equal(rebuilt.prompt_embeds, embeds.prompt_embeds)
    assert torch.equal(rebuilt.negative_prompt_embeds, embeds.negative_prompt_embeds)
    assert len(rebuilt) == 3 and len(picked) == 3


def test_over_long_prompts_are_flagged(model):
    long_prompt = "a red circle on a blue background " * 5  # > 77 byte-level tokens
    embeds = model.encode_prompt([PROMPTS[1], long_prompt])
    assert embeds.truncated == [False, True]
    assert embeds.select([1, 0]).truncated == [True, False]
    assert model.generate(embeds, [1, 2], PARAMS).shape == (2, 64, 64, 3)


def test_non_english_prompt_encodes(model):
    embeds = model.encode_prompt(["卡通风格的人物", "a cartoon character"])
    assert embeds.truncated == [False, False]
    assert not torch.equal(embeds.prompt_embeds[0], embeds.prompt_embeds[1])


@pytest.mark.parametrize("width, height", [(60, 64), (64, 36), (0, 64)])
def test_sizes_off_the_latent_grid_are_rejected(model, width, height):
    params = GenerationParams(width=width, height=height, steps=2)
    with pytest.raises(ValueError, match="multiples of 8"):
        model.check_params(params)
    with pytest.raises(ValueError, match="multiples of 8"):
        model.generate(model.encode_prompt(PROMPTS[:1]), [0], params)


def test_seed_count_must_match(model):
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        model.generate(model.encode_prompt(PROMPTS[:1]), [1, 2], PARAMS)


# -- SDXL, SD3 and FLUX, built in memory -------------------------------------------------------

FAMILY_PARAMS = GenerationParams(width=32, height=32, steps=2, guidance_scale=5.0,
                                 extra={"true_cfg_scale": 3.0})  # FLUX's knob for negatives


@pytest.fixture(scope="module", params=["sdxl", "sd3", "flux"])
def family(request) -> DiffusersImageModel:
    pipe = getattr(tiny_pipelines, f"build_tiny_{request.param}")()
    short = {} if request.param == "sdxl" else {"max_sequence_length": 32}  # T5 tokens
    return DiffusersImageModel(pipe, request.param, encode_options=short)


def family_params(model):
    # true_cfg_scale is FLUX's own switch; the others would reject it.
    return FAMILY_PARAMS if model.layout.true_cfg else GenerationParams(32, 32, 2, 5.0)


def test_family_matches_a_plain_pipeline_call(family):
    params = family_params(family)
    kwargs = dict(params.extra, **family.encode_options)
    generator = torch.Generator("cpu").manual_seed(SEEDS[0])
    plain = family.pipe(PROMPTS[0], negative_prompt="ugly", generator=generator, width=32,
                        height=32, num_inference_steps=2, guidance_scale=5.0,
                        output_type="np", **kwargs).images
    ours = draw(family, PROMPTS[:1], SEEDS[:1], params, ["ugly"])
    np.testing.assert_array_equal(ours, (plain * 255).round().astype(np.uint8))


def test_family_image_depends_only_on_its_prompt_and_seed(family):
    params, negatives = family_params(family), [None, "ugly", None]
    embeds = family.encode_prompt(PROMPTS, negatives)
    assert embeds.pooled_prompt_embeds.shape[0] == 3
    batch = family.generate(embeds, SEEDS, params)
    for i in range(3):
        alone = draw(family, [PROMPTS[i]], [SEEDS[i]], params, [negatives[i]])
        np.testing.assert_array_equal(batch[i], alone[0])
    assert not np.array_equal(batch[1], draw(family, PROMPTS[1:2], SEEDS[1:2], params)[0])


def test_family_flags_truncation_and_size(family):
    assert family.encode_prompt(["x " * 80, "x"]).truncated == [True, False]
    width = family.size_multiple() * 4 + 1
    with pytest.raises(ValueError, match=f"multiples of {family.size_multiple()}"):
        family.check_params(GenerationParams(width=width, height=32))

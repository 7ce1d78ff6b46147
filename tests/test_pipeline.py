import numpy as np
import pytest
import torch

from conftest import TINY
from quant_utils.errors import ConfigError, WeightsNotFoundError
from quant_utils.pipeline import (build_clip_tokenizers, build_pipeline,
                                  load_model_config)


def test_tiny_pipeline_has_every_layer_kind_of_sdxl(tiny_pipe):
    unet = tiny_pipe.unet
    names = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    for must in ["conv_in", "conv_out", "time_embedding.linear_1", "add_embedding.linear_1",
                 "down_blocks.0.resnets.0.conv1", "down_blocks.0.downsamplers.0.conv",
                 "down_blocks.1.attentions.0.proj_in", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
                 "down_blocks.2.attentions.0.transformer_blocks.2.ff.net.0.proj",
                 "up_blocks.0.resnets.0.conv_shortcut", "up_blocks.0.upsamplers.0.conv",
                 "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", "down_blocks.0.resnets.0.time_emb_proj"]:
        assert must in names, must
    assert unet.config.addition_embed_type == "text_time"
    assert tiny_pipe.scheduler.config.timestep_spacing == "trailing"
    assert type(tiny_pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"


def test_tiny_pipeline_is_deterministic_from_seed():
    cfg = load_model_config(TINY)
    a, b = build_pipeline(cfg), build_pipeline(cfg)
    for (n, p), (_, q) in zip(a.unet.named_parameters(), b.unet.named_parameters()):
        assert torch.equal(p, q), n


def test_tokenizer_is_real_clip_bpe():
    tok1, tok2 = build_clip_tokenizers()
    ids = tok1("a photograph of an astronaut riding a horse").input_ids
    # ids of OpenAI CLIP's tokenizer for this sentence
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert tok2.pad_token == "!" and tok1.model_max_length == 77


def test_real_config_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    cfg = load_model_config("configs/stable-diffusion/sdxl_turbo.yaml")
    with pytest.raises(WeightsNotFoundError, match="stabilityai/sdxl-turbo.*\n.*HF_HOME|random_weights") as e:
        build_pipeline(cfg)
    assert "`hf download stabilityai/sdxl-turbo`" in str(e.value)  # the CLI huggingface_hub ships


@pytest.mark.parametrize("text,match", [
    ("model: {source: tiny, colour: red}\n", "unknown key"),
    ("model: {source: tiny}\nsampling: {height: 500}\n", "multiples of 8"),
    ("model: {source: nope}\n", "model.source"),
    ("model: [unclosed\n", "not valid YAML"),
    ("model: {source: tiny}\nsampling: {steps: 9}\n", "1 to 4"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_model_config(p)


def test_runner_image_depends_only_on_seed(tiny_pipe):
    from quant_utils.runtime import Runner

    run = Runner(tiny_pipe)
    batch = run(["a cat", "a dog", "a bird"], [5, 6, 7], 64, 64)
    single = run(["a dog"], [6], 64, 64)
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    assert np.abs(batch[1].astype(int) - single[0].astype(int)).max() <= 1
    assert np.abs(batch[0].astype(int) - batch[1].astype(int)).mean() > 1  # different seeds differ


def test_runner_rejects_unknown_modes_and_labels_its_vae(tiny_pipe):
    from quant_utils.runtime import Runner

    with pytest.raises(ValueError, match="vae_exec"):
        Runner(tiny_pipe, "eager", vae_exec="fast")
    with pytest.raises(ValueError, match="exec_mode"):
        Runner(tiny_pipe, "turbo")
    if not torch.cuda.is_available():  # graphs need a GPU
        with pytest.raises(ValueError, match="CUDA"):
            Runner(tiny_pipe, "graph")
    assert Runner(tiny_pipe, "eager", vae_exec="static").vae_label == "eager"  # eager runs everything eager


def test_git_sha_prefers_the_stamp_a_device_job_exports(monkeypatch):
    from quant_utils.csvio import git_sha

    monkeypatch.setenv("MIXDQ_GIT_SHA", "abc1234")
    assert git_sha() == "abc1234 (stamp)"
    monkeypatch.delenv("MIXDQ_GIT_SHA")
    assert git_sha() != "abc1234 (stamp)" and git_sha()

"""The PEFT switches of issue 30: ``lora: {use_dora, use_rslora, init: pissa|gaussian}`` reach
peft's LoraConfig, ``train.neftune_alpha`` the Trainer's ``neftune_noise_alpha``; a PiSSA
adapter is saved as LoRA that works on the staged base."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, write_alpaca
from hpcft.core.job import TrainSpec


def _spec(**kw) -> TrainSpec:
    return TrainSpec(**{"task": "causal-lm", "model": "m", "dataset": "d.jsonl", **kw})


def test_the_switches_are_fields_and_checked():
    t = _spec(lora={"use_dora": True, "use_rslora": True, "init": "gaussian"}, neftune_alpha=5)
    assert (t.lora.use_dora, t.lora.use_rslora, t.lora.init, t.neftune_alpha) == (True, True, "gaussian", 5)
    assert _spec().lora is None
    for kw, message in [({"lora": {"init": "olora"}}, "Input should be 'pissa' or 'gaussian'"),
                        ({"lora": {"init": "pissa"}, "method": "qlora"}, "lora.init: pissa rewrites the base weights"),
                        ({"neftune_alpha": 0}, "greater than 0"),
                        ({"task": "dpo", "neftune_alpha": 5}, "neftune_alpha: only for task: causal-lm"),
                        ({"task": "sequence-classification", "neftune_alpha": 5}, "only for task: causal-lm")]:
        with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
            _spec(**kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("peft") / "llama", decoys=False)


def _model(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny)).eval()


@pytest.mark.worker
def test_the_built_adapter_carries_dora_rslora_and_gaussian(tiny):
    from hpcft.worker.engines.native.causal_lm import _with_lora

    m = _with_lora(_model(tiny), _spec(lora={"r": 4, "alpha": 8, "use_dora": True, "use_rslora": True,
                                             "init": "gaussian"}))
    cfg = m.peft_config["default"]
    assert (cfg.use_dora, cfg.use_rslora, cfg.init_lora_weights, cfg.r) == (True, True, "gaussian", 4)
    layer = m.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)      # rsLoRA: alpha / sqrt(r)
    assert "default" in layer.lora_magnitude_vector                      # DoRA's magnitudes
    plain = _with_lora(_model(tiny), _spec(lora={"r": 4, "alpha": 8})).base_model.model.model.layers[0].self_attn
    assert plain.q_proj.scaling["default"] == pytest.approx(2.0) and not plain.q_proj.use_dora["default"]


@pytest.mark.worker
def test_a_pissa_adapter_is_saved_as_lora_for_the_staged_base(tiny, tmp_path):
    import torch
    from peft import PeftModel

    from hpcft.worker.engines.native.causal_lm import _with_lora
    from hpcft.worker.engines.native.lora_switches import save_converted

    ids = torch.tensor([[3, 17, 42, 99, 7]])
    with torch.no_grad():
        before = _model(tiny)(ids).logits
    m = _with_lora(_model(tiny), _spec(lora={"r": 4, "alpha": 4, "init": "pissa"}))
    assert m.peft_config["default"].init_lora_weights == "pissa" and m.hpcft_pissa_init
    with torch.no_grad():   # PiSSA moves the principal part into the adapter: the same function at first
        assert torch.allclose(m(ids).logits, before, atol=1e-4)
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))   # "trained"
        trained = m(ids).logits
    save_converted(m, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True   # plain LoRA, twice the rank
    again = PeftModel.from_pretrained(_model(tiny), str(tmp_path / "out")).eval()   # on the staged base
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, trained, atol=1e-4)
        assert not torch.allclose(again(ids).logits, before, atol=1e-3)


@pytest.mark.slow
@pytest.mark.worker
def test_an_sft_run_records_the_switches_its_model_and_args_carry(tiny, hpcft_home, tmp_path):
    from devtools.runs import make_run, run_worker
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    register_local(Cache(hpcft_home / "cache"), "model", LLAMA_ID, tiny, aliases=["llama3-8b-instruct"])
    paths = make_run({"name": "sft-switches", "executor": "local", "train": {
        "task": "causal-lm", "model": "llama3-8b-instruct", "dataset": str(write_alpaca(tmp_path / "a.jsonl", n=24)),
        "max_steps": 2, "batch_size": 4, "max_seq_length": 64, "sample_prompts": 0, "neftune_alpha": 5,
        "lora": {"r": 4, "use_dora": True, "use_rslora": True, "init": "pissa"}}})
    proc = run_worker(paths, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads(paths.metrics.read_text())
    assert m["peft"] == {"r": 4, "alpha": 16, "use_dora": True, "use_rslora": True, "init": "pissa",
                         "neftune_alpha": 5.0, "saved_as": "lora (converted from pissa, rank x2)"}
    assert json.loads((paths.dir / "output" / "adapter_config.json").read_text())["r"] == 8

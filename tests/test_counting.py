import pytest

from scaleflow.config import ModelConfig
from scaleflow.counting import count
from scaleflow.model import GPT


def test_deepseek_m_matches_the_paper_example():
    # DeepSeek LLM: 8 layers, d=512, l_seq=4096 gives M = 72*8*512^2 + 12*8*512*4096.
    cfg = ModelConfig(n_layer=8, d_model=512, n_head=8, seq_len=4096)
    assert count(cfg).flops_deepseek == 352_321_536


def test_chinchilla_appendix_f_by_hand():
    cfg = ModelConfig(n_layer=2, d_model=64, n_head=4, seq_len=128, vocab_size=256)
    embed = 2 * 256 * 64
    attention = 2 * 3 * 64 * 64 + 2 * 128 * 64 + 3 * 4 * 128 + 2 * 128 * 64 + 2 * 64 * 64
    dense = 2 * 2 * 64 * 256
    logits = 2 * 64 * 256
    assert attention == 67_072
    assert count(cfg).flops_chinchilla == 3 * (embed + 2 * (attention + dense) + logits) == 992_256


def test_kaplan_non_embedding_count_by_hand():
    # 12 n_layer d^2 for the matrices, plus one RMSNorm gain of d per norm (2 per block + final).
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2)
    c = count(cfg)
    assert c.params_non_embedding == 12 * 2 * 32**2 + 5 * 32 == 24_736
    assert c.params_with_head == c.params_non_embedding + 256 * 32
    assert c.flops_6n_with_head == 6 * c.params_with_head


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"bias": True, "norm": "layernorm"},
        {"mlp": "swiglu", "tie_embeddings": False},
        {"pos": "learned", "qk_norm": True},
        {"qk_norm": True, "norm": "layernorm", "bias": True, "d_ff": 100},
    ],
)
def test_total_matches_the_model(shape):
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, seq_len=16, **shape)
    assert count(cfg).params_total == GPT(cfg).num_params()

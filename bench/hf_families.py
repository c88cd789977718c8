"""Small random configs of the Hugging Face families bench/hf_models.py measures, as users have them.

Every config is the family's own defaults with the sizes made small (hidden 32, 2 layers, 4 heads,
2 KV heads where the family has grouped-query attention, MLP 64, vocabulary 100, 4 experts top-2):
nothing else is switched off, so causal LMs come with `use_cache=True`. deberta_v3 is DebertaV2Model with the
attention settings DeBERTa-v3's published configs set on it (disentangled attention). Nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as T  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, LENGTH = 100, 32, 2, 4, 2, 64, 12
EXPERTS = dict(num_experts_per_tok=2)


@dataclass(frozen=True)
class Family:
    """One family: how to build it, what it takes, whether it generates text."""

    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], tuple]
    causal: bool = False


def _ids() -> tuple:
    return (torch.randint(1, VOCAB, (1, LENGTH)),)


def _image(size: int = 32) -> Callable[[], tuple]:
    return lambda: (torch.randn(1, 3, size, size),)


def _decoder(model_cls, config_cls, **sizes) -> Family:
    """A causal LM with the common size names (each family's own names are passed in `sizes`)."""
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=FFN, max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return Family(lambda: model_cls(config_cls(**{**common, **sizes})), _ids, causal=True)


def _encoder(model_cls, config_cls, **sizes) -> Family:
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=FFN, max_position_embeddings=64, pad_token_id=0)
    return Family(lambda: model_cls(config_cls(**{**common, **sizes})), _ids)


GQA = dict(num_key_value_heads=KV_HEADS)
HEAD_DIM = dict(num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS)

FAMILIES: dict[str, Family] = {
    # decoders (causal LMs)
    "gpt2": Family(lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS,
                                                          n_head=HEADS, n_positions=64, bos_token_id=0,
                                                          eos_token_id=0)), _ids, causal=True),
    "llama": _decoder(T.LlamaForCausalLM, T.LlamaConfig, **GQA),
    "mistral": _decoder(T.MistralForCausalLM, T.MistralConfig, **GQA),
    "qwen2": _decoder(T.Qwen2ForCausalLM, T.Qwen2Config, **GQA, tie_word_embeddings=True),
    "qwen3": _decoder(T.Qwen3ForCausalLM, T.Qwen3Config, **HEAD_DIM),
    "gemma": _decoder(T.GemmaForCausalLM, T.GemmaConfig, **HEAD_DIM),
    "gemma2": _decoder(T.Gemma2ForCausalLM, T.Gemma2Config, **HEAD_DIM, sliding_window=4),
    "gemma3": _decoder(T.Gemma3ForCausalLM, T.Gemma3TextConfig, **HEAD_DIM, sliding_window=4),
    "phi": _decoder(T.PhiForCausalLM, T.PhiConfig),
    "phi3": _decoder(T.Phi3ForCausalLM, T.Phi3Config, **GQA),
    "stablelm": _decoder(T.StableLmForCausalLM, T.StableLmConfig, **GQA),
    "gpt_neox": _decoder(T.GPTNeoXForCausalLM, T.GPTNeoXConfig),
    "glm4": _decoder(T.Glm4ForCausalLM, T.Glm4Config, **HEAD_DIM),
    "olmo2": _decoder(T.Olmo2ForCausalLM, T.Olmo2Config, **GQA),
    "granite": _decoder(T.GraniteForCausalLM, T.GraniteConfig, **GQA),
    "starcoder2": _decoder(T.Starcoder2ForCausalLM, T.Starcoder2Config, **GQA),
    "falcon": Family(lambda: T.FalconForCausalLM(T.FalconConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        pad_token_id=0, bos_token_id=0, eos_token_id=0)), _ids, causal=True),
    "mixtral": _decoder(T.MixtralForCausalLM, T.MixtralConfig, **GQA, num_local_experts=4, **EXPERTS),
    "qwen3_moe": _decoder(T.Qwen3MoeForCausalLM, T.Qwen3MoeConfig, **HEAD_DIM, num_experts=4,
                          moe_intermediate_size=32, **EXPERTS),
    "gpt_oss": _decoder(T.GptOssForCausalLM, T.GptOssConfig, **HEAD_DIM, num_local_experts=4, **EXPERTS),
    # encoders
    "bert": _encoder(T.BertModel, T.BertConfig),
    "roberta": _encoder(T.RobertaModel, T.RobertaConfig, pad_token_id=1),
    "distilbert": Family(lambda: T.DistilBertModel(T.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
        max_position_embeddings=64)), _ids),
    "electra": _encoder(T.ElectraModel, T.ElectraConfig, embedding_size=HIDDEN),
    "deberta_v2": _encoder(T.DebertaV2Model, T.DebertaV2Config),
    # DeBERTa-v3's own settings: disentangled attention, log buckets (256 of 512 positions there: 32 of 64 here)
    "deberta_v3": _encoder(T.DebertaV2Model, T.DebertaV2Config, relative_attention=True, pos_att_type=["p2c", "c2p"],
                           position_buckets=32, norm_rel_ebd="layer_norm", share_att_key=True,
                           max_relative_positions=-1),
    "t5_encoder": Family(lambda: T.T5EncoderModel(T.T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS,
        num_heads=HEADS)), _ids),
    # vision and audio
    "vit": Family(lambda: T.ViTForImageClassification(T.ViTConfig(
        image_size=16, patch_size=4, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, num_labels=5)), _image(16)),
    "swin": Family(lambda: T.SwinForImageClassification(T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
        num_labels=5)), _image(32)),
    "convnext": Family(lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)), _image(32)),
    "whisper_encoder": Family(lambda: T.WhisperForAudioClassification(T.WhisperConfig(
        num_mel_bins=16, d_model=HIDDEN, encoder_layers=LAYERS, encoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, max_source_positions=16, num_labels=3)), lambda: (torch.randn(1, 16, 32),)),
}

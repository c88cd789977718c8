"""Small random configs of the Hugging Face families bench/hf_models.py measures, as users have them.

Every config is the family's own defaults with the sizes made small (hidden 32, 2 layers, 4 heads,
2 KV heads where the family has grouped-query attention, MLP 64, vocabulary 100, 4 experts top-2;
CNNs: 2 stages of 16 and 32 channels, images of 16 or 32 pixels; speech: 800 samples of waveform):
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


def _waveform() -> tuple:
    return (torch.randn(1, 800),)


def _ids_mask_decoder_ids() -> tuple:
    """input_ids, attention_mask, decoder_input_ids: an encoder-decoder that does not shift input_ids itself."""
    ids = _ids()[0]
    return ids, torch.ones_like(ids), ids[:, :6]


def _decoder(model_cls, config_cls, **sizes) -> Family:
    """A causal LM with the common size names (each family's own names are passed in `sizes`)."""
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=FFN, max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return Family(lambda: model_cls(config_cls(**{**common, **sizes})), _ids, causal=True)


def _encoder(model_cls, config_cls, **sizes) -> Family:
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=FFN, max_position_embeddings=64, pad_token_id=0)
    return Family(lambda: model_cls(config_cls(**{**common, **sizes})), _ids)


def _family(model_cls, config_cls, inputs: Callable[[], tuple], causal: bool = False, **config) -> Family:
    return Family(lambda: model_cls(config_cls(**config)), inputs, causal)


GQA = dict(num_key_value_heads=KV_HEADS)
HEAD_DIM = dict(num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS)
ROBERTA = dict(pad_token_id=1)  # position ids count from padding_idx + 1
SEQ2SEQ = dict(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
               encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
               max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
SPEECH = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
              conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=4, vocab_size=VOCAB)
VIT_SIZES = dict(image_size=16, patch_size=4, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
VIT = dict(VIT_SIZES, intermediate_size=FFN)
CLIP_TEXT = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                 num_attention_heads=HEADS, max_position_embeddings=64)
CNN = dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)
CODEGEN = dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, rotary_dim=4, n_positions=64,
               bos_token_id=0, eos_token_id=0, pad_token_id=0)

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
    "opt": _decoder(T.OPTForCausalLM, T.OPTConfig, ffn_dim=FFN, word_embed_proj_dim=HIDDEN),
    "bloom": _family(T.BloomForCausalLM, T.BloomConfig, _ids, causal=True, vocab_size=VOCAB, hidden_size=HIDDEN,
                     n_layer=LAYERS, n_head=HEADS, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "gptj": _family(T.GPTJForCausalLM, T.GPTJConfig, _ids, causal=True, **CODEGEN),
    "codegen": _family(T.CodeGenForCausalLM, T.CodeGenConfig, _ids, causal=True, n_ctx=64, **CODEGEN),
    "gpt_neo": _family(T.GPTNeoForCausalLM, T.GPTNeoConfig, _ids, causal=True, vocab_size=VOCAB, hidden_size=HIDDEN,
                       num_layers=LAYERS, num_heads=HEADS, attention_types=[[["global", "local"], 1]], window_size=4,
                       max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0),
    "gpt_bigcode": _family(T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig, _ids, causal=True, vocab_size=VOCAB, n_embd=HIDDEN,
                           n_layer=LAYERS, n_head=HEADS, n_positions=64, bos_token_id=0, eos_token_id=0,
                           pad_token_id=0),
    "mpt": _family(T.MptForCausalLM, T.MptConfig, _ids, causal=True, vocab_size=VOCAB, d_model=HIDDEN, n_layers=LAYERS,
                   n_heads=HEADS, max_seq_len=64, expansion_ratio=2, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "cohere": _decoder(T.CohereForCausalLM, T.CohereConfig, **GQA),
    "cohere2": _decoder(T.Cohere2ForCausalLM, T.Cohere2Config, **GQA, sliding_window=4),
    "olmo": _decoder(T.OlmoForCausalLM, T.OlmoConfig, **GQA),
    "olmo3": _decoder(T.Olmo3ForCausalLM, T.Olmo3Config, **GQA, sliding_window=4),
    "smollm3": _decoder(T.SmolLM3ForCausalLM, T.SmolLM3Config, **GQA),
    "persimmon": _decoder(T.PersimmonForCausalLM, T.PersimmonConfig),
    "helium": _decoder(T.HeliumForCausalLM, T.HeliumConfig, **HEAD_DIM),
    "exaone4": _decoder(T.Exaone4ForCausalLM, T.Exaone4Config, **GQA, sliding_window=4),
    "ernie4_5": _decoder(T.Ernie4_5ForCausalLM, T.Ernie4_5Config, **HEAD_DIM),
    "seed_oss": _decoder(T.SeedOssForCausalLM, T.SeedOssConfig, **HEAD_DIM),
    "apertus": _decoder(T.ApertusForCausalLM, T.ApertusConfig, **GQA),
    "arcee": _decoder(T.ArceeForCausalLM, T.ArceeConfig, **GQA),
    "qwen2_moe": _decoder(T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig, **GQA, num_experts=4, moe_intermediate_size=32,
                          shared_expert_intermediate_size=32, **EXPERTS),
    "olmoe": _decoder(T.OlmoeForCausalLM, T.OlmoeConfig, **GQA, num_experts=4, **EXPERTS),
    "granitemoe": _decoder(T.GraniteMoeForCausalLM, T.GraniteMoeConfig, **GQA, num_local_experts=4, **EXPERTS),
    "phimoe": _decoder(T.PhimoeForCausalLM, T.PhimoeConfig, **GQA, num_local_experts=4, **EXPERTS),
    "deepseek_v3": _decoder(T.DeepseekV3ForCausalLM, T.DeepseekV3Config, num_key_value_heads=HEADS,
                            n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=32, n_group=1,
                            topk_group=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
                            qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, **EXPERTS),
    "mamba": _family(T.MambaForCausalLM, T.MambaConfig, _ids, causal=True, vocab_size=VOCAB, hidden_size=HIDDEN,
                     state_size=4, num_hidden_layers=LAYERS, expand=2, conv_kernel=4, pad_token_id=0,
                     bos_token_id=0, eos_token_id=0),
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
    "albert": _encoder(T.AlbertModel, T.AlbertConfig, embedding_size=16),
    "xlm_roberta": _encoder(T.XLMRobertaModel, T.XLMRobertaConfig, **ROBERTA),
    "xlm_roberta_xl": _encoder(T.XLMRobertaXLModel, T.XLMRobertaXLConfig, **ROBERTA),
    "camembert": _encoder(T.CamembertModel, T.CamembertConfig, **ROBERTA),
    "mpnet": _encoder(T.MPNetModel, T.MPNetConfig, **ROBERTA),
    "mobilebert": _encoder(T.MobileBertModel, T.MobileBertConfig, embedding_size=16, intra_bottleneck_size=16,
                           num_feedforward_networks=2),
    "roformer": _encoder(T.RoFormerModel, T.RoFormerConfig, embedding_size=HIDDEN),
    "modernbert": _encoder(T.ModernBertModel, T.ModernBertConfig, global_attn_every_n_layers=2, local_attention=4),
    "nomic_bert": _encoder(T.NomicBertModel, T.NomicBertConfig),
    "ernie": _encoder(T.ErnieModel, T.ErnieConfig),
    "convbert": _encoder(T.ConvBertModel, T.ConvBertConfig, embedding_size=HIDDEN),
    "squeezebert": _encoder(T.SqueezeBertModel, T.SqueezeBertConfig, embedding_size=HIDDEN),
    "clip_text": _family(T.CLIPTextModel, T.CLIPTextConfig, _ids, **CLIP_TEXT),
    "siglip_text": _family(T.SiglipTextModel, T.SiglipTextConfig, _ids, **CLIP_TEXT),
    # encoder-decoders (BART and mBART shift input_ids into their decoder's inputs)
    "bart": _family(T.BartModel, T.BartConfig, _ids, **SEQ2SEQ),
    "mbart": _family(T.MBartModel, T.MBartConfig, _ids, **SEQ2SEQ),
    "t5": _family(T.T5ForConditionalGeneration, T.T5Config, _ids_mask_decoder_ids, vocab_size=VOCAB, d_model=HIDDEN,
                  d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS, decoder_start_token_id=0),
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
    "wav2vec2": _family(T.Wav2Vec2Model, T.Wav2Vec2Config, _waveform, **SPEECH),
    "hubert": _family(T.HubertModel, T.HubertConfig, _waveform, **SPEECH),
    "wavlm": _family(T.WavLMModel, T.WavLMConfig, _waveform, **SPEECH),
    "dinov2": _family(T.Dinov2Model, T.Dinov2Config, _image(16), **VIT_SIZES, mlp_ratio=2),
    "deit": _family(T.DeiTForImageClassification, T.DeiTConfig, _image(16), **VIT, num_labels=5),
    "beit": _family(T.BeitForImageClassification, T.BeitConfig, _image(16), **VIT, num_labels=5, vocab_size=VOCAB),
    "vit_mae": Family(lambda: T.ViTMAEModel(T.ViTMAEConfig(**VIT, mask_ratio=0.0)),  # noise given: no random masking
                      lambda: (torch.randn(1, 3, 16, 16), torch.rand(1, 16))),
    "clip_vision": _family(T.CLIPVisionModel, T.CLIPVisionConfig, _image(16), **VIT),
    "siglip_vision": _family(T.SiglipVisionModel, T.SiglipVisionConfig, _image(16), **VIT),
    "swinv2": Family(lambda: T.Swinv2ForImageClassification(T.Swinv2Config(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
        num_labels=5)), _image(32)),
    "convnextv2": Family(lambda: T.ConvNextV2ForImageClassification(T.ConvNextV2Config(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)), _image(32)),
    "resnet": _family(T.ResNetForImageClassification, T.ResNetConfig, _image(32), **CNN, layer_type="bottleneck"),
    "regnet": _family(T.RegNetForImageClassification, T.RegNetConfig, _image(32), **CNN, groups_width=8),
    "mobilenet_v2": _family(T.MobileNetV2ForImageClassification, T.MobileNetV2Config, _image(32), image_size=32,
                            depth_multiplier=0.25, finegrained_output=False, num_labels=5),
    "mobilevit": _family(T.MobileViTForImageClassification, T.MobileViTConfig, _image(32), image_size=32,
                         hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], num_labels=5),
    "efficientnet": _family(T.EfficientNetForImageClassification, T.EfficientNetConfig, _image(32), image_size=32,
                            width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=5),
    "segformer": _family(T.SegformerForSemanticSegmentation, T.SegformerConfig, _image(32), num_encoder_blocks=2,
                         depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                         num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=3),
    "detr": Family(lambda: T.DetrForObjectDetection(T.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=T.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], out_features=["stage2"]),
        d_model=HIDDEN, encoder_layers=1, decoder_layers=1, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, num_queries=5, num_labels=3)), _image(32)),
}

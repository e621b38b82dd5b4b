"""Tiny random causal LMs and tokenizers built offline, for tests and quick demos (never a download).

Each architecture fmrilm supports (Llama/SmolLM, Qwen2, Qwen3, GPT-2) gets a 2-layer model of width 32 and a
byte-level BPE tokenizer trained in milliseconds on a few sentences, wrapped in ``PreTrainedTokenizerFast``
with a chat template, so the whole stack (chat template, special tokens, PEFT, save/load) runs for real.
"""

from __future__ import annotations

from typing import Any

TINY_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gpt2")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: A deliberately different format, to check that prompts follow each model's own template.
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '### ' + message['role'] + ':\n' + message['content'] + "
    "eos_token + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}"
)

_CORPUS = [
    "The brain at rest shows strong connectivity within the default mode network.",
    "Visual and somatomotor regions are more coupled than usual in this scan.",
    "Functional connectivity between frontoparietal and salience networks is weak.",
    "Hello, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog. 0123456789 z-score high low typical.",
]


def tiny_text_tokenizer(template: str = "chatml", vocab_size: int = 320):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML ("chatml") or a plain ("plain") template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if template == "chatml":
        specials = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        chat_template = CHATML_TEMPLATE
    elif template == "plain":
        specials = {"bos_token": "<s>", "eos_token": "</s>"}
        chat_template = PLAIN_TEMPLATE
    else:
        raise ValueError("template must be 'chatml' or 'plain'")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(dict.fromkeys(specials.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template, **specials)


def tiny_config(arch: str, vocab_size: int, **overrides: Any):
    """A 2-layer, width-32 config of ``arch`` (tied embeddings for llama/gpt2, untied for qwen)."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab_size)
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, **common,
        )  # fmt: skip
    elif arch in ("qwen2", "qwen3"):
        cls = Qwen3Config if arch == "qwen3" else Qwen2Config
        extra = {"head_dim": 8} if arch == "qwen3" else {}
        cfg = cls(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False, **extra, **common,
        )  # fmt: skip
    elif arch == "gpt2":
        cfg = GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=2048, bos_token_id=0, eos_token_id=0, **common
        )
    else:
        raise ValueError(f"arch must be one of {TINY_ARCHITECTURES}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_causal_lm(arch: str = "llama", *, template: str | None = None, seed: int = 0, **overrides: Any):
    """``(model, tokenizer)``: a random tiny ``arch`` model in float32 and its tokenizer (GPT-2 gets "plain").

    ``overrides`` set config fields, e.g. ``initializer_range=0.3`` for output logits wide enough to be
    learned through LoRA alone (at the default 0.02 a frozen output layer caps every logit near zero)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_text_tokenizer(template or ("plain" if arch == "gpt2" else "chatml"))
    config = tiny_config(arch, vocab_size=len(tokenizer), **overrides)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def tiny_fmri_tokenizer(
    codebook_size: int = 32, num_latents: int = 4, window_length: int = 16, seed: int = 0
):
    """An untrained tiny `FmriTokenizerModel` (windows of ``window_length`` samples at TR 2 s)."""
    import torch

    from fmrilm.tokenizer import FmriTokenizerConfig, FmriTokenizerModel

    config = FmriTokenizerConfig.from_preset(
        "tiny",
        codebook_size=codebook_size,
        num_latents=num_latents,
        window_length=window_length,
        patch_length=8,
    )
    torch.manual_seed(seed)
    return FmriTokenizerModel(config).eval()


def random_scan(n_timepoints: int = 64, atlas: Any = "dosenbach160", seed: int = 0, scan_id: str = "scan-0"):
    """A `Scan` of white noise on a built-in atlas (TR 2 s), for shape and plumbing tests."""
    import numpy as np

    from fmrilm.atlas import Atlas
    from fmrilm.scan import Scan

    atlas = Atlas.builtin(atlas) if isinstance(atlas, str) else atlas
    ts = np.random.default_rng(seed).standard_normal((n_timepoints, atlas.n_regions)).astype(np.float32)
    return Scan(ts, tr=2.0, atlas=atlas, scan_id=scan_id, subject_id=f"sub-{scan_id}")


def write_llama_gguf(model: Any, tokenizer: Any, path: Any) -> None:
    """Write a (tiny) Hugging Face Llama model and its byte-level BPE tokenizer as an F32 GGUF file.

    Follows llama.cpp's conventions (tensor names, rotary permutation of q/k, ``tokenizer.ggml.*`` metadata),
    so transformers' GGUF loader reads it back as it reads real GGUF files.
    """
    import json

    import gguf
    import numpy as np

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3 = control
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's rotary layout for q and k
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        value = tensor.detach().float().numpy()
        if key.endswith("q_proj.weight"):
            value = permute(value, cfg.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            value = permute(value, cfg.num_key_value_heads)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

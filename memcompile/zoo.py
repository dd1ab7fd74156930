"""A model zoo for tests and the benchmark: families written independently of the planner.

The planner must be faithful on models it was never tuned on, so the zoo spans Hugging Face
decoders (with and without grouped-query attention), an encoder, a vision transformer and an
encoder-decoder, plus hand-written models (BatchNorm ResNet, MLP-Mixer, ConvNeXt, a GroupNorm U-Net, a
mixture of experts, Swin-style shifted windows, torch's nn.TransformerEncoder, an unrolled GRU
cell) and the toy transformers of ``memcompile.models``. Every entry is built from a
config with seeded random weights, sized for a CPU (one step well under a second).

Contract as for the toy presets: ``make(name) -> (model, example_inputs)`` with
``model(*example_inputs)`` a scalar loss; each name also has a module-level factory
(``hf-gpt2`` -> ``hf_gpt2``) for ``memcompile inspect memcompile/zoo.py:hf_gpt2``.
Hugging Face entries need ``transformers`` (an optional dependency, imported lazily).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NAMES", "HF_NAMES", "make", "needs_transformers"]


def _require_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "memcompile.zoo: the Hugging Face entries (hf-*) need transformers; "
            "install it with `pip install transformers`, or pick a zoo entry without the hf- prefix"
        ) from exc
    return transformers


def _token_batch(vocab: int, batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    return idx, labels


def _image_batch(batch: int, channels: int, size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(batch, channels, size, size, generator=g)
    labels = torch.randint(0, classes, (batch,), generator=g)
    return images, labels


# ----------------------------------------------------------------------------- Hugging Face


class HFLoss(nn.Module):
    """A Hugging Face model called with keyword inputs, returning its ``.loss`` (the zoo's contract)."""

    def __init__(self, model: nn.Module, input_name: str) -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.input_name: inputs}, labels=labels).loss


# Every HF config: dropout off (plans are compared with eager gradients), an explicit attention
# implementation, special token ids inside the small vocabularies, and no KV cache (a training step
# needs none, and a block re-run by checkpointing would append to it again).
_NO_SPECIAL_TOKENS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _hf_causal(config_name: str, model_name: str, *, batch: int, seq: int, seed: int, **config_kw):
    tf = _require_transformers()
    config = getattr(tf, config_name)(**_NO_SPECIAL_TOKENS, use_cache=False, **config_kw)
    torch.manual_seed(seed)
    model = getattr(tf, model_name)(config)
    # GPT2LMHeadModel's name maps to no loss type, and the warning it logs is a graph break
    model.loss_type = "ForCausalLM"
    return HFLoss(model, "input_ids"), _token_batch(config.vocab_size, batch, seq, seed)


def _gpt2(*, dim: int, layers: int, heads: int, seq: int, batch: int, attn: str, seed: int):
    return _hf_causal(
        "GPT2Config", "GPT2LMHeadModel", batch=batch, seq=seq, seed=seed, vocab_size=512, n_positions=seq,
        n_embd=dim, n_layer=layers, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        attn_implementation=attn,
    )


def _llama_like(config_name: str, model_name: str, *, dim: int, layers: int, heads: int, kv_heads: int,
                seq: int, batch: int, attn: str, seed: int, **extra):
    return _hf_causal(
        config_name, model_name, batch=batch, seq=seq, seed=seed, vocab_size=512, hidden_size=dim,
        intermediate_size=int(dim * 8 / 3) // 8 * 8, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, max_position_embeddings=seq, attention_dropout=0.0,
        attn_implementation=attn, tie_word_embeddings=False, **extra,
    )


def _bert(*, dim: int, layers: int, heads: int, seq: int, batch: int, attn: str, seed: int):
    tf = _require_transformers()
    config = tf.BertConfig(
        vocab_size=512, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * dim, max_position_embeddings=seq, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation=attn, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = tf.BertForMaskedLM(config)
    return HFLoss(model, "input_ids"), _token_batch(config.vocab_size, batch, seq, seed)


def _vit(*, dim: int, layers: int, heads: int, image: int, patch: int, batch: int, attn: str, seed: int):
    tf = _require_transformers()
    config = tf.ViTConfig(
        image_size=image, patch_size=patch, num_channels=3, hidden_size=dim, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * dim, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=10, attn_implementation=attn,
        # the loss sets problem_type on its first call when it is None: a recompile on the second step
        problem_type="single_label_classification",
    )
    torch.manual_seed(seed)
    model = tf.ViTForImageClassification(config)
    return HFLoss(model, "pixel_values"), _image_batch(batch, 3, image, 10, seed)


def _t5(*, dim: int, layers: int, heads: int, seq: int, batch: int, seed: int):
    tf = _require_transformers()
    config = tf.T5Config(
        vocab_size=512, d_model=dim, d_kv=dim // heads, d_ff=4 * dim, num_layers=layers,
        num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0, decoder_start_token_id=0, use_cache=False,
        **_NO_SPECIAL_TOKENS,
    )
    torch.manual_seed(seed)
    model = tf.T5ForConditionalGeneration(config)
    return HFLoss(model, "input_ids"), _token_batch(config.vocab_size, batch, seq, seed)


# ----------------------------------------------------------------------------- plain torch


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BatchNorm, projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style BatchNorm ResNet returning the mean cross-entropy."""

    def __init__(self, widths: tuple[int, ...], blocks_per_stage: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return F.cross_entropy(self.head(x.mean((2, 3))), labels)


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, tokens, dim)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """MLP-Mixer (Tolstikhin et al. 2021) returning the mean cross-entropy."""

    def __init__(self, *, image: int, patch: int, dim: int, depth: int, classes: int = 10) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patchify = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList(MixerBlock(tokens, dim, dim // 2, 4 * dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.patchify(images).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return F.cross_entropy(self.head(self.norm(x).mean(1)), labels)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, inverted-bottleneck MLP with GELU, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al. 2022), small: patchify stem, stages separated by LayerNorm + 2x2 conv."""

    def __init__(self, *, dims: tuple[int, ...], depths: tuple[int, ...], classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 2, 2), LayerNorm2d(dims[0]))
        blocks: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i > 0:
                blocks.append(nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)))
            blocks.extend(ConvNeXtBlock(dim) for _ in range(depth))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return F.cross_entropy(self.head(self.norm(x.mean((2, 3)))), labels)


class UNetBlock(nn.Sequential):
    """Two 3x3 convolutions, each with GroupNorm and SiLU (a diffusion model's block)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class UNet(nn.Module):
    """A small U-Net for dense regression: max-pool down, transposed-convolution up, skip connections
    concatenated, mean-squared error against a target image."""

    def __init__(self, *, widths: tuple[int, ...], groups: int) -> None:
        super().__init__()
        chans = (3, *widths)
        self.down = nn.ModuleList(UNetBlock(chans[i], chans[i + 1], groups) for i in range(len(widths)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(w, v, 2, stride=2) for w, v in zip(widths[:0:-1], widths[-2::-1]))
        self.merge = nn.ModuleList(UNetBlock(2 * v, v, groups) for v in widths[-2::-1])
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        skips = []
        x = images
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], 1))
        return F.mse_loss(self.out(x), target)


class MoELayer(nn.Module):
    """Pre-norm mixture-of-experts MLP: a top-k softmax router, its weights scattered into a dense gate, every
    expert run on every token (einsum), and the router's load-balancing term."""

    def __init__(self, dim: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, experts)
        self.w_in = nn.Parameter(torch.randn(experts, dim, 2 * dim) * dim ** -0.5)
        self.w_out = nn.Parameter(torch.randn(experts, 2 * dim, dim) * (2 * dim) ** -0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(x)
        probs = self.router(h).softmax(-1)
        weights, chosen = probs.topk(self.top_k, -1)
        gate = torch.zeros_like(probs).scatter(-1, chosen, weights / weights.sum(-1, keepdim=True))
        hidden = F.silu(torch.einsum("btd,edf->btef", h, self.w_in))
        out = torch.einsum("btef,efd->bted", hidden, self.w_out)
        balance = probs.mean((0, 1)).pow(2).sum() * probs.shape[-1]
        return x + (out * gate.unsqueeze(-1)).sum(-2), balance


class MoELM(nn.Module):
    """A language model of mixture-of-experts layers (no attention), cross-entropy plus 0.01 of the balance term."""

    def __init__(self, *, vocab: int, dim: int, layers: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(MoELayer(dim, experts, top_k) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        balance = x.new_zeros(())
        for layer in self.layers:
            x, b = layer(x)
            balance = balance + b
        return F.cross_entropy(self.head(x).flatten(0, 1), labels.flatten()) + 0.01 * balance


class SwinBlock(nn.Module):
    """Window attention (``nn.MultiheadAttention`` within square windows), shifted by half a window with
    ``torch.roll`` on odd blocks, then a tanh-GELU MLP; pre-norm, residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool) -> None:
        super().__init__()
        self.window, self.shift = window, window // 2 if shift else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        b, h, w, c = x.shape
        k = self.window
        y = torch.roll(x, (-self.shift, -self.shift), (1, 2)) if self.shift else x
        y = y.view(b, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, k * k, c)
        n = self.norm1(y)
        y, _ = self.attn(n, n, n, need_weights=False)
        y = y.view(b, h // k, w // k, k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        x = x + (torch.roll(y, (self.shift, self.shift), (1, 2)) if self.shift else y)
        return x + self.mlp(self.norm2(x))


class Swin(nn.Module):
    """A one-stage Swin-style classifier: 2x2 patches, alternating plain and shifted window blocks."""

    def __init__(self, *, dim: int, depth: int, heads: int, window: int, classes: int = 10) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, dim, 2, 2)
        self.blocks = nn.ModuleList(SwinBlock(dim, heads, window, shift=i % 2 == 1) for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.patchify(images).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return F.cross_entropy(self.head(self.norm(x.mean((1, 2)))), labels)


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` (pre-norm, GELU) as a token classifier with label smoothing."""

    def __init__(self, *, vocab: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.encoder(self.embed(idx)))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), label_smoothing=0.1)


class GRUSequence(nn.Module):
    """A ``nn.GRUCell`` unrolled over the sequence (the compiled graph holds every step), a per-step readout,
    smooth-L1 loss."""

    def __init__(self, *, features: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Linear(features, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        outs = []
        for t in range(x.shape[1]):
            h = self.cell(torch.tanh(self.inp(x[:, t])), h)
            outs.append(self.out(h))
        return F.smooth_l1_loss(torch.cat(outs, 1), target)


def _resnet(*, widths: tuple[int, ...], blocks_per_stage: int, image: int, batch: int, seed: int):
    torch.manual_seed(seed)
    return ResNet(widths, blocks_per_stage), _image_batch(batch, 3, image, 10, seed)


def _mixer(*, image: int, patch: int, dim: int, depth: int, batch: int, seed: int):
    torch.manual_seed(seed)
    return MLPMixer(image=image, patch=patch, dim=dim, depth=depth), _image_batch(batch, 3, image, 10, seed)


def _convnext(*, dims: tuple[int, ...], depths: tuple[int, ...], image: int, batch: int, seed: int):
    torch.manual_seed(seed)
    return ConvNeXt(dims=dims, depths=depths), _image_batch(batch, 3, image, 10, seed)


def _unet(*, widths: tuple[int, ...], groups: int, image: int, batch: int, seed: int):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    return UNet(widths=widths, groups=groups), (torch.randn(batch, 3, image, image, generator=g),
                                                torch.randn(batch, 1, image, image, generator=g))


def _moe(*, vocab: int, dim: int, layers: int, experts: int, top_k: int, seq: int, batch: int, seed: int):
    torch.manual_seed(seed)
    return MoELM(vocab=vocab, dim=dim, layers=layers, experts=experts, top_k=top_k), _token_batch(vocab, batch, seq, seed)


def _swin(*, dim: int, depth: int, heads: int, window: int, image: int, batch: int, seed: int):
    torch.manual_seed(seed)
    return Swin(dim=dim, depth=depth, heads=heads, window=window), _image_batch(batch, 3, image, 10, seed)


def _torch_encoder(*, vocab: int, dim: int, layers: int, heads: int, seq: int, batch: int, seed: int):
    torch.manual_seed(seed)
    return TorchEncoder(vocab=vocab, dim=dim, layers=layers, heads=heads), _token_batch(vocab, batch, seq, seed)


def _gru(*, features: int, hidden: int, steps: int, batch: int, seed: int):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    return GRUSequence(features=features, hidden=hidden), (torch.randn(batch, steps, features, generator=g),
                                                           torch.randn(batch, steps, generator=g))


def _toy(*, seed: int, **args):
    from .models import ModelArgs, Transformer

    model_args = ModelArgs(**args)
    torch.manual_seed(seed)
    model = Transformer(model_args)
    return model, _token_batch(model_args.vocab_size, model_args.batch_size, model_args.seq_len, seed)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    build: Callable[..., tuple[nn.Module, tuple[torch.Tensor, ...]]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    hf: bool = False


_ENTRIES: dict[str, _Entry] = {
    # Hugging Face decoders: two widths/depths of GPT-2, Llama, and grouped-query attention in Qwen2 and Mistral.
    "hf-gpt2": _Entry(build=_gpt2, hf=True, kwargs=dict(dim=128, layers=4, heads=4, seq=128, batch=4, attn="eager")),
    "hf-gpt2-deep": _Entry(build=_gpt2, hf=True, kwargs=dict(dim=64, layers=8, heads=2, seq=64, batch=4, attn="sdpa")),
    "hf-llama": _Entry(build=lambda **kw: _llama_like("LlamaConfig", "LlamaForCausalLM", **kw), hf=True,
                       kwargs=dict(dim=128, layers=4, heads=4, kv_heads=4, seq=128, batch=4, attn="eager")),
    "hf-qwen2-gqa": _Entry(build=lambda **kw: _llama_like("Qwen2Config", "Qwen2ForCausalLM", **kw), hf=True,
                           kwargs=dict(dim=128, layers=4, heads=8, kv_heads=2, seq=128, batch=4, attn="sdpa")),
    "hf-mistral-gqa": _Entry(build=lambda **kw: _llama_like("MistralConfig", "MistralForCausalLM", sliding_window=None, **kw),
                             hf=True, kwargs=dict(dim=96, layers=3, heads=6, kv_heads=2, seq=256, batch=2, attn="eager")),
    # Hugging Face encoder, vision transformer, encoder-decoder.
    "hf-bert": _Entry(build=_bert, hf=True, kwargs=dict(dim=128, layers=4, heads=4, seq=128, batch=4, attn="eager")),
    "hf-vit": _Entry(build=_vit, hf=True, kwargs=dict(dim=128, layers=4, heads=4, image=32, patch=4, batch=8, attn="sdpa")),
    "hf-t5": _Entry(build=_t5, hf=True, kwargs=dict(dim=128, layers=2, heads=4, seq=64, batch=4)),
    # Plain torch: convolutions with BatchNorm, an all-MLP model, a modern convnet.
    "resnet-bn": _Entry(build=_resnet, kwargs=dict(widths=(16, 32, 64), blocks_per_stage=2, image=32, batch=8)),
    "mlp-mixer": _Entry(build=_mixer, kwargs=dict(image=32, patch=4, dim=128, depth=4, batch=8)),
    "convnext": _Entry(build=_convnext, kwargs=dict(dims=(32, 64, 128), depths=(2, 2, 2), image=32, batch=8)),
    # Plain torch, families no other entry has: a U-Net (GroupNorm, transposed convolutions, concatenated
    # skips), a mixture of experts (top-k router, scatter), Swin-style shifted windows (roll, nn.MultiheadAttention),
    # torch's own nn.TransformerEncoder, and a GRU cell unrolled over time.
    "unet-gn": _Entry(build=_unet, kwargs=dict(widths=(16, 32, 64), groups=4, image=32, batch=4)),
    "moe-topk": _Entry(build=_moe, kwargs=dict(vocab=256, dim=64, layers=3, experts=4, top_k=2, seq=64, batch=4)),
    "swin-window": _Entry(build=_swin, kwargs=dict(dim=64, depth=4, heads=4, window=4, image=32, batch=4)),
    "torch-encoder": _Entry(build=_torch_encoder, kwargs=dict(vocab=512, dim=128, layers=4, heads=4, seq=64, batch=4)),
    "gru-cell": _Entry(build=_gru, kwargs=dict(features=16, hidden=64, steps=8, batch=16)),
    # The project's own toy transformers (memcompile.models), CPU-sized.
    "toy-gpt": _Entry(build=_toy, kwargs=dict(vocab_size=512, dim=128, n_layers=4, n_heads=4, max_seq_len=128,
                                              batch_size=4, seq_len=128, arch="gpt")),
    "toy-llama": _Entry(build=_toy, kwargs=dict(vocab_size=512, dim=128, n_layers=6, n_heads=4, max_seq_len=64,
                                                batch_size=4, seq_len=64, arch="llama")),
}

NAMES: tuple[str, ...] = tuple(_ENTRIES)
"""Every zoo entry, in table order."""

HF_NAMES: tuple[str, ...] = tuple(name for name, entry in _ENTRIES.items() if entry.hf)
"""The entries that need ``transformers``."""


def needs_transformers(name: str) -> bool:
    return _entry(name).hf


def _entry(name: str) -> _Entry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; valid names: {', '.join(NAMES)}") from None


def make(name: str, *, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(model, example_inputs)`` for a zoo entry, weights and batch seeded; ``model(*inputs)`` is the loss."""
    entry = _entry(name)
    model, inputs = entry.build(seed=seed, **entry.kwargs)
    return model, tuple(inputs)


# Factories for `memcompile inspect memcompile/zoo.py:hf_gpt2` and friends (FILE.py:FACTORY).
def hf_gpt2():
    return make("hf-gpt2")


def hf_gpt2_deep():
    return make("hf-gpt2-deep")


def hf_llama():
    return make("hf-llama")


def hf_qwen2_gqa():
    return make("hf-qwen2-gqa")


def hf_mistral_gqa():
    return make("hf-mistral-gqa")


def hf_bert():
    return make("hf-bert")


def hf_vit():
    return make("hf-vit")


def hf_t5():
    return make("hf-t5")


def resnet_bn():
    return make("resnet-bn")


def mlp_mixer():
    return make("mlp-mixer")


def convnext():
    return make("convnext")


def unet_gn():
    return make("unet-gn")


def moe_topk():
    return make("moe-topk")


def swin_window():
    return make("swin-window")


def torch_encoder():
    return make("torch-encoder")


def gru_cell():
    return make("gru-cell")


def toy_gpt():
    return make("toy-gpt")


def toy_llama():
    return make("toy-llama")

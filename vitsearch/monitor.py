"""Per-epoch model monitors on a small fixed probe batch (validation images, never augmented).

- `cls_norm`: mean L2 norm of the CLS token's final (normed) features.
- `attn_entropy_mean` / `attn_entropy_min`: attention entropy (nats) averaged over heads and query
  tokens, per layer; the mean over layers and the lowest layer. Entropy collapse in some layer is a
  known sign of unstable ViT training (Zhai et al. 2023).
- `mlp_sparsity`: share of MLP activations (after GELU) with |a| < 0.01, over all blocks.

Training keeps timm's fused attention, which never materialises attention weights; the monitors
recompute them from each block's q and k on the probe batch only, in eval mode, without gradients.
With `monitors: false` nothing here runs. With `attention: linformer` the weights are those over the
k projected key positions.

`attention_maps` gives, for a few images, each layer's CLS-token attention over the patch grid (mean
over heads) and attention rollout (Abnar & Zuidema 2020); figures.attention_png draws them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

PROBE_IMAGES = 64
SPARSE_BELOW = 0.01


def attention_weights(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention of a timm Attention (or LinformerAttention) on its input x: (B, heads, n, keys)."""
    from .model import LinformerAttention

    if isinstance(attn, LinformerAttention):
        q, k, _ = attn.project(x)
    else:
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For normalised `images` (B, C, H, W): the full attention weights per layer (L, B, heads, n, n), each
    layer's CLS attention over the patch grid, mean over heads (L, B, g, g), and the rollout's CLS row
    over the grid (B, g, g): the product over layers of 0.5 * (head-mean attention) + 0.5 * identity,
    rows renormalised. Needs full attention: Linformer's keys are projections, not patches."""
    from .model import LinformerAttention

    if any(isinstance(block.attn, LinformerAttention) for block in model.blocks):
        raise ValueError("attention maps need full attention (linformer's keys are not patches)")
    was_training = model.training
    model.eval()
    layers: list[torch.Tensor] = []
    handles = [block.attn.register_forward_hook(lambda attn, inputs, _out: layers.append(
        attention_weights(attn, inputs[0]))) for block in model.blocks]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    weights = torch.stack(layers)  # (L, B, heads, n, n)
    prefix = model.num_prefix_tokens
    grid = model.patch_embed.grid_size
    mean = weights.mean(dim=2)  # (L, B, n, n)
    cls = mean[:, :, 0, prefix:].reshape(len(layers), len(images), *grid)
    eye = torch.eye(mean.shape[-1], device=mean.device)
    rollout = eye.expand_as(mean[0])
    for layer in mean:
        step = 0.5 * layer + 0.5 * eye
        rollout = (step / step.sum(-1, keepdim=True)) @ rollout
    return weights, cls, rollout[:, 0, prefix:].reshape(len(images), *grid)


@torch.no_grad()
def measure(model: nn.Module, probe: torch.Tensor) -> dict[str, float]:
    """Monitors of `model` on `probe` (normalised images); restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    entropies: list[torch.Tensor] = []
    active = [torch.zeros((), device=probe.device), torch.zeros((), device=probe.device)]  # near-zero, total

    def attention_hook(attn, inputs, _output):
        weights = attention_weights(attn, inputs[0])
        entropies.append(-(weights * weights.clamp_min(1e-12).log()).sum(-1).mean())

    def mlp_hook(_act, _inputs, output):
        active[0] += (output.abs() < SPARSE_BELOW).sum()
        active[1] += output.numel()

    handles = []
    for block in model.blocks:
        handles.append(block.attn.register_forward_hook(attention_hook))
        handles.append(block.mlp.act.register_forward_hook(mlp_hook))
    try:
        features = model.forward_features(probe)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    per_layer = torch.stack(entropies)
    return {"cls_norm": features[:, 0].float().norm(dim=-1).mean().item(),
            "attn_entropy_mean": per_layer.mean().item(), "attn_entropy_min": per_layer.min().item(),
            "mlp_sparsity": (active[0] / active[1]).item()}

"""Per-epoch model monitors on a small fixed probe batch (validation images, never augmented).

- `cls_norm`: mean L2 norm of the CLS token's final (normed) features.
- `attn_entropy_mean` / `attn_entropy_min`: attention entropy (nats) averaged over heads and query
  tokens, per layer; the mean over layers and the lowest layer. Entropy collapse in some layer is a
  known sign of unstable ViT training (Zhai et al. 2023).
- `mlp_sparsity`: share of MLP activations (after GELU) with |a| < 0.01, over all blocks.

Training keeps timm's fused attention, which never materialises attention weights; the monitors
recompute them from each block's q and k on the probe batch only, in eval mode, without gradients.
With `monitors: false` nothing here runs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

PROBE_IMAGES = 64
SPARSE_BELOW = 0.01


@torch.no_grad()
def measure(model: nn.Module, probe: torch.Tensor) -> dict[str, float]:
    """Monitors of `model` on `probe` (normalised images); restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    entropies: list[torch.Tensor] = []
    active = [torch.zeros((), device=probe.device), torch.zeros((), device=probe.device)]  # near-zero, total

    def attention_hook(attn, inputs, _output):
        x = inputs[0]
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        weights = ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
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

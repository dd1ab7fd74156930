"""Gradients through memcompile (Inductor) against eager on models written for this check only.

    python examples/unseen_gradients.py all 0.5,0.0
    python examples/unseen_gradients.py complex_rope,tied_inplace 0.0 keep,recompute,quantize

The zoo's five newest families (memcompile.zoo: unet-gn, moe-topk, swin-window, torch-encoder, gru-cell) and four
small models no zoo entry resembles: a 1-D conv net with BatchNorm1d and in-place ReLU, attention whose RoPE is
written with complex numbers, a tied embedding with in-place ops and a buffer counter, and a batch that requires
grad. Each is compiled with ``backend="memcompile"`` at each budget, two steps are run, and every gradient is
compared with eager's (1e-4 of its largest entry; 1e-3 with lossy modes). One line per (model, budget): the
gradients' verdict, the plans and any memcompile warning. Run from outside the repository root.
"""
import copy
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import memcompile
from memcompile import zoo

torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False


class Audio(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 16, 9, stride=2, padding=4), nn.BatchNorm1d(16), nn.ReLU(inplace=True),
                              nn.MaxPool1d(2), nn.Conv1d(16, 32, 9, padding=4, dilation=1), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
                              nn.Conv1d(32, 32, 5, padding=4, dilation=2), nn.Hardswish(), nn.AdaptiveAvgPool1d(1))
        self.fc = nn.Linear(32, 10)
    def forward(self, x, y):
        return F.cross_entropy(self.fc(self.net(x).squeeze(-1)), y)
def audio():
    return Audio(), (torch.randn(8, 1, 1024), torch.randint(0, 10, (8,)))

class ComplexRope(nn.Module):
    def __init__(self, d=64, h=4):
        super().__init__()
        self.h = h; self.qkv = nn.Linear(d, 3 * d, bias=False); self.o = nn.Linear(d, d, bias=False)
        self.emb = nn.Embedding(200, d); self.head = nn.Linear(d, 200); self.norm = nn.RMSNorm(d)
        hd = d // h
        freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(64).float(), freqs)
        self.register_buffer("cis", torch.polar(torch.ones_like(ang), ang), persistent=False)
    def rope(self, x):
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * self.cis[: x.shape[1]].view(1, x.shape[1], 1, -1)).flatten(3).type_as(x)
    def forward(self, idx, tgt):
        x = self.emb(idx)
        for _ in range(2):
            B, T, D = x.shape
            q, k, v = self.qkv(self.norm(x)).view(B, T, 3, self.h, D // self.h).unbind(2)
            q, k = self.rope(q), self.rope(k)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        return F.cross_entropy(self.head(x).flatten(0, 1), tgt.flatten())
def complex_rope():
    return ComplexRope(), (torch.randint(0, 200, (4, 64)), torch.randint(0, 200, (4, 64)))

class TiedInplace(nn.Module):
    def __init__(self, d=64, v=256):
        super().__init__()
        self.emb = nn.Embedding(v, d, padding_idx=0); self.l1 = nn.Linear(d, d); self.l2 = nn.Linear(d, d)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
    def forward(self, idx, tgt):
        x = self.emb(idx)
        h = self.l1(x); h.relu_(); h = h * 2.0; h.add_(x)
        h = F.leaky_relu(self.l2(h), 0.1)
        h = h.masked_fill(idx.unsqueeze(-1) == 0, 0.0)
        logits = h @ self.emb.weight.t()
        with torch.no_grad():
            self.steps.add_(1)
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=0)
def tied_inplace():
    return TiedInplace(), (torch.randint(0, 256, (4, 48)), torch.randint(0, 256, (4, 48)))

class InputGrad(nn.Module):
    """the batch itself requires grad (adversarial / saliency training)"""
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 128), nn.ELU(), nn.Linear(128, 128), nn.Mish(), nn.Linear(128, 1))
    def forward(self, x, y):
        return F.binary_cross_entropy_with_logits(self.net(x).squeeze(-1), y)
def input_grad():
    x = torch.randn(64, 32, requires_grad=True)
    return InputGrad(), (x, torch.rand(64))

MODELS = dict(
    unet_gn=lambda: zoo.make("unet-gn"), moe_topk=lambda: zoo.make("moe-topk"),
    swin_window=lambda: zoo.make("swin-window"), torch_encoder=lambda: zoo.make("torch-encoder"),
    gru_cell=lambda: zoo.make("gru-cell"),
    audio=audio, complex_rope=complex_rope, tied_inplace=tied_inplace, input_grad=input_grad,
)


def grads(model, inputs, params=None):
    """(loss, gradients) of one step of ``model``; the gradients are read from ``params`` (the module behind a
    compiled ``model``), and the batch's where it requires grad."""
    params = params if params is not None else model
    params.zero_grad(set_to_none=True)
    for x in inputs:
        if x.requires_grad: x.grad = None
    loss = model(*inputs); loss.backward()
    g = {n: p.grad.clone() for n, p in params.named_parameters() if p.grad is not None}
    g.update({f"input{i}": x.grad.clone() for i, x in enumerate(inputs) if x.requires_grad})
    return loss.detach(), g

def run(name, budget, modes=None):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    ref_model = copy.deepcopy(model)
    ref_loss, ref = grads(ref_model, inputs)
    torch._dynamo.reset()
    opts = {"memory_budget": budget}
    if modes: opts["modes"] = modes
    t0 = time.time()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        try:
            compiled = torch.compile(model, backend="memcompile", options=opts)
            steps = [grads(compiled, inputs, model) for _ in range(2)]  # the first step compiles, the second reruns
        except Exception as e:
            return f"{name:14s} {budget!s:5s} ERROR {type(e).__name__}: {str(e)[:300]}"
    dt = time.time() - t0
    loss = steps[0][0]
    rtol = 1e-3 if modes and ("quantize" in modes or "fewbit" in modes) else 1e-4
    bad = []
    for step, (_, g) in enumerate(steps, 1):  # no optimizer step between them: both equal eager's
        for k, r in ref.items():
            if k not in g:
                bad.append(f"step {step} {k} missing")
                continue
            err = (g[k] - r).abs().max().item()
            scale = r.abs().max().item() + 1e-12
            if err > rtol * scale + 1e-6:
                bad.append(f"step {step} {k} {err / scale:.2e}")
    plans = memcompile.last_plans()
    ours = [str(w.message)[:160] for w in ws if "memcompile" in str(w.message) or "memcompile" in str(w.filename)]
    desc = "; ".join(f"{p.source} base {p.baseline_peak_bytes/1e6:.2f} pred {p.predicted_peak_bytes/1e6:.2f}MB" for p in plans)
    return (f"{name:14s} {budget!s:5s} {dt:5.0f}s loss {loss.item():.5f}/{ref_loss.item():.5f} "
            f"grads {'OK' if not bad else 'BAD ' + ', '.join(bad[:4])} | {desc} | warn {ours[:3]}")

if __name__ == "__main__":
    names = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] != "all" else list(MODELS)
    budgets = [float(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "0.5,0.0").split(",")]
    modes = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else None
    for n in names:
        for b in budgets:
            try:
                print(run(n, b, modes), flush=True)
            except Exception:
                print(n, b, "HARNESS ERROR", traceback.format_exc()[-800:], flush=True)

"""Hugging Face models built from small configs (random weights, nothing downloaded) through memcompile.

At budgets 1.0, 0.5 and 0.0: the gradients equal eager's, and the measured peak of a step does not
grow as the budget falls.
"""

from __future__ import annotations

import pytest
import torch

import memcompile
from _helpers import assert_monotone, assert_same_grads, compiled_copy, measured_peak_bytes, train_step

transformers = pytest.importorskip("transformers")

BUDGETS = (1.0, 0.5, 0.0)
VOCAB, HIDDEN, LAYERS, BATCH, SEQ = 128, 64, 2, 4, 64


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=SEQ, n_embd=HIDDEN, n_layer=LAYERS, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    # GPT2LMHeadModel's name maps to no loss type, and the warning it logs is a graph break
    model.loss_type = "ForCausalLM"
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    return model, {"input_ids": ids, "labels": ids}


def _llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
    )
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    return transformers.LlamaForCausalLM(config), {"input_ids": ids, "labels": ids}


def _bert():
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=2 * HIDDEN, max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    labels = ids.clone()
    labels[:, ::3] = -100  # positions the masked-LM loss ignores
    return transformers.BertForMaskedLM(config), {"input_ids": ids, "labels": labels}


def _vit():
    config = transformers.ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=2, intermediate_size=2 * HIDDEN, num_labels=10,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        # the loss sets problem_type on its first call when it is None: a recompile on the second step
        problem_type="single_label_classification",
    )
    return transformers.ViTForImageClassification(config), {
        "pixel_values": torch.randn(BATCH, 3, 32, 32), "labels": torch.randint(0, 10, (BATCH,)),
    }


MODELS = {"gpt2": _gpt2, "llama": _llama, "bert": _bert, "vit": _vit}


def build(name: str):
    torch.manual_seed(0)
    model, batch = MODELS[name]()
    return model.train(), batch  # every dropout probability is 0: deterministic, and the graphs are training graphs


def step_of(batch):
    return lambda model: model(**batch).loss


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_equal_eager_and_peak_falls_with_the_budget(name, no_compile_cache):
    model, batch = build(name)
    step = step_of(batch)
    ref_loss, ref = train_step(model, step)
    predicted, measured = {}, {}
    for budget in BUDGETS:
        torch._dynamo.reset()
        memcompile.clear_plans()
        twin, compiled = compiled_copy(model, memory_budget=budget)
        loss, got = train_step(compiled, step)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert_same_grads(got, ref)
        plans = memcompile.last_plans()
        assert plans, "no plan was recorded"
        assert len(plans) == 1, [p.graph_index for p in plans]  # one graph: no graph break, no recompile
        predicted[budget] = plans[0].predicted_peak_bytes
        measured[budget] = measured_peak_bytes(twin, compiled, step, list(batch.values()))
    print(f"{name}: predicted {predicted}, measured {measured}")
    assert predicted[0.0] < predicted[1.0], "budget 0.0 planned nothing below the default partition"
    assert_monotone(predicted, what="predicted peak", rtol=0.0)
    assert_monotone(measured, what="measured peak")


@pytest.mark.parametrize("name", list(MODELS))
def test_smallest_peak_plan_gives_eager_gradients(name, no_compile_cache):
    """The quick version: budget 0.0 only (the most recompute), gradients only."""
    model, batch = build(name)
    step = step_of(batch)
    ref_loss, ref = train_step(model, step)
    _, compiled = compiled_copy(model, memory_budget=0.0)
    loss, got = train_step(compiled, step)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_same_grads(got, ref)
    (plan,) = memcompile.last_plans()
    assert plan.source in ("ilp", "ilp+local", "all-recompute", "all-recompute+local")
    assert any(d.mode == "recompute" and d.bytes for d in plan.decisions)

import pytest
import torch

from memcompile.config import MemConfig, parse_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [("6GiB", 6 * 2**30), ("800MB", 800 * 10**6), ("1.5e9", 1_500_000_000), ("512 KiB", 512 * 1024), ("42", 42)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"memory_budgt": 0.5}, ValueError, "memory_budgt"),
        ({"memory_budget": -1}, ValueError, "memory_budget"),
        ({"memory_budget": -0.5}, ValueError, "memory_budget"),
        ({"memory_budget": 1.5}, ValueError, "memory_budget"),
        ({"memory_budget": "six gigs"}, ValueError, "memory_budget"),
        ({"memory_budget": "6 parsecs"}, ValueError, "memory_budget"),
        ({"memory_budget": True}, TypeError, "memory_budget"),
        ({"modes": ("keep", "teleport")}, ValueError, "modes"),
        ({"inner": "tvm"}, ValueError, "inner"),
        ({"solver_time_limit": 0}, ValueError, "solver_time_limit"),
        ({"on_infeasible": "ignore"}, ValueError, "on_infeasible"),
    ],
)
def test_bad_options_name_the_option(options, error, names):
    with pytest.raises(error, match=names):
        MemConfig.from_options(options)


def test_unknown_key_lists_accepted_keys():
    with pytest.raises(ValueError, match="accepted keys: .*memory_budget"):
        MemConfig.from_options({"budget": 0.5})


def test_fraction_and_byte_budgets():
    assert MemConfig(memory_budget=0.25).budget_fraction == 0.25
    assert MemConfig(memory_budget=0.0).budget_fraction == 0.0
    assert MemConfig(memory_budget="1GiB").budget_bytes == 2**30
    assert MemConfig(memory_budget=10**9).budget_bytes == 10**9
    assert not MemConfig().has_budget


def test_cache_key_covers_every_option():
    base = MemConfig(memory_budget=0.5)
    assert base.cache_key() == MemConfig(memory_budget=0.5).cache_key()
    for other in (MemConfig(memory_budget=0.4), MemConfig(memory_budget=0.5, inner="eager"),
                  MemConfig(memory_budget=0.5, solver_time_limit=3), MemConfig(memory_budget=0.5, on_infeasible="best_effort")):
        assert other.cache_key() != base.cache_key()


def test_bad_option_through_torch_compile_is_a_clear_error():
    model = torch.nn.Linear(4, 4)
    compiled = torch.compile(model, backend="memcompile", options={"memory_budget": "lots"})
    with pytest.raises(Exception, match="memory_budget: cannot parse 'lots'"):
        compiled(torch.randn(2, 4))


def test_inplace_is_a_default_lossless_mode_and_offload_is_opt_in():
    assert MemConfig().modes == ("keep", "recompute", "inplace")
    assert MemConfig(modes=("inplace",)).modes == ("keep", "inplace")
    assert MemConfig(modes=("keep", "recompute")).modes == ("keep", "recompute")  # inplace can be left out
    assert MemConfig(modes=("keep", "inplace")).cache_key() != MemConfig(modes=("keep",)).cache_key()
    assert "offload" not in MemConfig().modes
    assert MemConfig(modes=("recompute", "offload")).modes == ("keep", "recompute", "offload")
    assert MemConfig(modes=("keep", "offload")).cache_key() != MemConfig(modes=("keep",)).cache_key()


def test_offload_cpu_test_hook_is_private_and_validated():
    assert MemConfig()._force_offload_on_cpu is False
    hooked = MemConfig.from_options({"modes": ("keep", "offload"), "_force_offload_on_cpu": True})
    assert hooked._force_offload_on_cpu and hooked.cache_key() != MemConfig(modes=("keep", "offload")).cache_key()
    with pytest.raises(TypeError, match="_force_offload_on_cpu"):
        MemConfig(_force_offload_on_cpu=1)
    with pytest.raises(ValueError, match="accepted keys") as err:
        MemConfig.from_options({"offload_on_cpu": True})
    assert "_force_offload_on_cpu" not in str(err.value)

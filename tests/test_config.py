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


# ---------------------------------------------------------------------- issue 16: options that mean one thing
@pytest.mark.parametrize(("text", "fraction", "nbytes"), [
    ("0.5", 0.5, None), ("0.3", 0.3, None), ("1.0", 1.0, None), ("0", 0.0, None),
    ("1e9", None, 10**9), ("800000000", None, 800_000_000), ("512B", None, 512), ("0.5GiB", None, 2**29),
])
def test_a_budget_string_that_is_a_bare_number_reads_as_the_cli_reads_it(text, fraction, nbytes):
    """'0.5' was a 0-byte cap (and '1.0' a 1-byte one) while the CLI read --budget 0.5 as a fraction."""
    config = MemConfig(memory_budget=text)
    assert (config.budget_fraction, config.budget_bytes) == (fraction, nbytes)


@pytest.mark.parametrize(("text", "message"), [
    ("0.4B", "at least 1 byte"), ("2.5", "neither a fraction in \\[0, 1\\] nor a whole number of bytes"),
    ("-0.5", "expected a fraction"), ("inf", "expected a fraction"), ("nan", "expected a fraction"),
])
def test_a_budget_string_that_means_no_budget_is_refused(text, message):
    with pytest.raises(ValueError, match=f"memory_budget: .*{message}"):
        MemConfig(memory_budget=text)


@pytest.mark.parametrize("limit", [float("inf"), float("nan"), -1.0])
def test_solver_time_limit_must_be_finite_and_positive(limit):
    """inf was accepted, then CBC's call overflowed and the plan fell back with 'please report'."""
    with pytest.raises(ValueError, match="solver_time_limit: expected a positive number of seconds"):
        MemConfig(memory_budget=0.5, solver_time_limit=limit)


@pytest.mark.parametrize("path", ["", "   "])
def test_an_empty_report_dir_is_refused(path):
    """report_dir='' was accepted and wrote nothing."""
    with pytest.raises(ValueError, match="report_dir: got an empty path"):
        MemConfig(report_dir=path)

"""Byte sizes and traffic of the lossy storage modes, as plain arithmetic for the planner.

Kept free of triton and of tensors so the planner can price a mode without importing a
kernel. ``numel`` may be an int or a sympy expression (dynamic shapes): only ``+``, ``*``
and floor division are applied to it. The layouts are the ones quantize.py and fewbit.py
produce; tests/kernels check each formula against real kernel outputs.
"""

QUANT_FORMATS = ("int8", "fp8")
"""int8: symmetric absmax; fp8: float8_e4m3fn. Both store 1 byte per element."""

MIN_GROUP_SIZE, MAX_GROUP_SIZE = 16, 1024
"""Group sizes are powers of two in this range: the group is a Triton tile dimension."""

SCALE_BYTES = 4
"""One fp32 scale per group."""

FEWBIT_BITS = (2, 3)


def check_group_size(group_size: int) -> None:
    """Raise ValueError unless ``group_size`` is a power of two in the supported range."""
    if (
        not isinstance(group_size, int)
        or isinstance(group_size, bool)
        or not MIN_GROUP_SIZE <= group_size <= MAX_GROUP_SIZE
        or group_size & (group_size - 1)
    ):
        raise ValueError(
            f"group_size must be a power of two in [{MIN_GROUP_SIZE}, {MAX_GROUP_SIZE}] (it "
            f"is a Triton tile dimension), got {group_size!r}; 128 is the usual choice"
        )


def _check_format(fmt: str) -> None:
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"fmt must be one of {QUANT_FORMATS}, got {fmt!r}")


def _check_bits(bits: int) -> None:
    if bits not in FEWBIT_BITS:
        raise ValueError(f"few-bit bits must be one of {FEWBIT_BITS}, got {bits!r}")


def _check_numel(numel) -> None:
    if isinstance(numel, int) and numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")


def num_groups(numel, group_size: int):
    """Number of scales: ceil(numel / group_size), the last group may be partial."""
    return -(-numel // group_size)


def quantized_nbytes(numel, *, group_size: int = 128, fmt: str = "int8"):
    """Bytes kept for backward by the quantize mode: 1-byte codes plus fp32 scales.

    Example: 1 Mi bf16 elements (2 MiB) at group 128 -> 1 MiB + 32 KiB.
    """
    _check_numel(numel)
    check_group_size(group_size)
    _check_format(fmt)
    return numel + SCALE_BYTES * num_groups(numel, group_size)


def quantize_bytes_moved(numel, dtype, *, group_size: int = 128, fmt: str = "int8"):
    """Bytes read plus written by one quantize and one dequantize of ``numel`` elements.

    quantize reads E*n and writes the packed buffer; dequantize reads it back and writes
    E*n (E = ``dtype.itemsize``, the activation's element size; the output has its dtype).
    """
    return 2 * numel * dtype.itemsize + 2 * quantized_nbytes(numel, group_size=group_size, fmt=fmt)


def storage_bits(bits: int) -> int:
    """Bits one code occupies in the packed buffer: 3-bit codes live in 4-bit nibbles."""
    _check_bits(bits)
    return 2 if bits == 2 else 4


def fewbit_nbytes(numel, *, bits: int = 2):
    """Bytes kept for backward by the few-bit mode: ceil(numel * storage_bits / 8) codes."""
    _check_numel(numel)
    return -(-numel * storage_bits(bits) // 8)


def fewbit_bytes_moved(numel, dtype, *, bits: int = 2):
    """Bytes read plus written by the few-bit forward and backward kernels together.

    forward: read x, write y and the codes; backward: read grad_out and the codes, write
    grad_in. They replace the op's own forward and backward, which move 5*E*n
    (x -> y, then grad_out and x -> grad_in), so few-bit changes traffic by
    ``2 * fewbit_nbytes - E * n``: for fp32/bf16 that is a saving, not a cost.
    """
    return 4 * numel * dtype.itemsize + 2 * fewbit_nbytes(numel, bits=bits)

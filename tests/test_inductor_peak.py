"""examples/inductor_peak.py: replaying a generated module's allocations, and matching them to the profiler's."""

from _examples import load_example

tool = load_example("inductor_peak.py")

CODE = '''
def call(self, args):
    a, b = args
    args.clear()
    buf0 = empty_strided_cpu((4, 8), (8, 1), torch.float32)
    # Topologically Sorted Source Nodes: [mm], Original ATen: [aten.mm]
    extern_kernels.mm(a, b, out=buf0)
    buf1 = empty_strided_cpu((4, 8), (1, 4), torch.bfloat16)
    buf2 = reinterpret_tensor(buf0, (32, ), (1, ), 0); del buf0  # reuse
    cpp_fused_mul_0(buf2, buf1)
    buf3 = empty_strided_cpu((2, 8), (8, 1), torch.int64)
    del buf1
    buf4 = buf3; del buf3  # reuse
    buf5 = empty_strided_cpu((), (), torch.float32)
    del buf2
    return (buf4, buf5, )

def get_args():
    pass
'''


def test_the_replay_follows_reuse_reinterpretation_and_del():
    allocs = tool.allocations(CODE)
    assert [(a.buffer, a.nbytes) for a in allocs] == [("buf0", 128), ("buf1", 64), ("buf3", 128), ("buf5", 4)]
    assert allocs[0].source == "" and allocs[1].source == "mm"
    # buf0's storage lives on as buf2 (a reinterpretation) until buf2 is deleted; buf1 is deleted before buf5
    assert allocs[2].live == {"buf0": 128, "buf1": 64, "buf3": 128}
    assert allocs[3].live == {"buf0": 128, "buf3": 128, "buf5": 4}


def test_storage_bytes_follow_the_strides():
    assert tool.storage_bytes([4, 8], [1, 4], "bfloat16") == 64
    assert tool.storage_bytes([4, 1], [1, 512], "float32") == 16  # a size-1 dimension's stride adds nothing
    assert tool.storage_bytes([0, 8], [8, 1], "float32") == 0


def test_the_match_skips_what_the_code_does_not_allocate():
    # the profiler also sees an extern fallback's output (999) the generated code does not allocate
    assert tool.match([128, 64, 128], [128, 999, 64, 128]) == [0, -1, 1, 2]
    assert tool.match([128], [64, 128, 128]) == [-1, 0, -1]

"""Property: random updates applied through the Python API and the same
updates applied by the Rust API directly (`_mmsb.apply_ops_in_rust`, a
loop of `Mmsb::update_page` calls) give the same state hash. Ops the state
refuses (out of range, bad lengths) are refused on both sides."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb
from mmsb import _mmsb

LENS = [1, 7, 64, 130]


@st.composite
def ops(draw):
    n_pages = draw(st.integers(1, 4))
    lens = [draw(st.sampled_from(LENS)) for _ in range(n_pages)]
    out = [("create", n) for n in lens]
    for _ in range(draw(st.integers(0, 25))):
        page = draw(st.integers(1, n_pages + 1))  # n_pages + 1 does not exist
        n = lens[page - 1] if page <= n_pages else 8
        kind = draw(st.sampled_from(["full", "sparse", "dense"]))
        if kind == "full":
            size = draw(st.sampled_from([n, n, n + 1]))
            out.append(("full", page, draw(st.binary(min_size=size, max_size=size))))
        elif kind == "sparse":
            runs, at = [], 0
            for _ in range(draw(st.integers(1, 4))):
                at += draw(st.integers(0, 8))
                ln = draw(st.integers(1, 6))
                runs.append((at, draw(st.binary(min_size=ln, max_size=ln))))
                at += ln + draw(st.integers(0, 1))  # 0: adjacent runs, coalesced
            out.append(("sparse", page, runs))
        else:
            data = draw(st.binary(min_size=n, max_size=n))
            mask = bytes(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
            out.append(("dense", page, data, mask))
    return out


def apply_in_python(ops):
    refused = 0
    with mmsb.open(durability="none") as s:
        for op in ops:
            try:
                if op[0] == "create":
                    s.create_page(op[1])
                elif op[0] == "full":
                    s.update(op[1], np.frombuffer(op[2], np.uint8))
                elif op[0] == "sparse":
                    s.update(op[1], runs=op[2])
                else:
                    s.update(op[1], op[2], mask=np.frombuffer(op[3], np.uint8).astype(bool))
            except mmsb.MmsbError:
                refused += 1
        return s.state_hash(), refused


@settings(max_examples=150, deadline=None)
@given(ops())
def test_python_and_rust_agree(ops):
    assert apply_in_python(ops) == _mmsb.apply_ops_in_rust(ops)


def test_a_difference_is_seen():
    # The comparison can fail: one byte apart, the hashes differ.
    a = [("create", 4), ("full", 1, b"abcd")]
    b = [("create", 4), ("full", 1, b"abce")]
    assert _mmsb.apply_ops_in_rust(a)[0] != _mmsb.apply_ops_in_rust(b)[0]
    assert apply_in_python(a)[0] == _mmsb.apply_ops_in_rust(a)[0]

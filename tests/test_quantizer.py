"""EMA vector quantiser: nearest codes, straight-through gradients, EMA and dead-code rules."""

import pytest
import torch
import torch.distributed as dist

from mdvae.stage1.quantizer import EMAVectorQuantizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: a second thread only adds contention on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_quantizer(num_codes=6, dim=3, decay=0.9, threshold=0.0, seed=0):
    torch.manual_seed(seed)
    return EMAVectorQuantizer(num_codes, dim, decay=decay, dead_code_threshold=threshold)


def buffers(q):
    return {k: v.clone() for k, v in q.named_buffers()}


def test_eval_output_is_the_nearest_code_rebuilt_from_indices():
    q = make_quantizer().eval()
    z = torch.randn(4, 5, 3)
    with torch.no_grad():
        out = q(z)
    assert out.indices.shape == (4, 5) and out.indices.dtype == torch.int64
    assert torch.equal(out.z_q, q.codes_from_indices(out.indices))
    # The nearest code, to float32 rounding: the quantiser expands |z|^2 - 2 z.e + |e|^2,
    # whose terms are each rounded to 2**-24 of their size, so a code whose distance is
    # within a few such roundings of the nearest one may be chosen instead of it.
    dist2 = torch.cdist(z.reshape(-1, 3).double(), q.embedding.double()).pow(2)  # (20, K)
    chosen = dist2.gather(1, out.indices.view(-1, 1)).squeeze(1)
    scale = z.reshape(-1, 3).double().pow(2).sum(1) + q.embedding.double().pow(2).sum(1).max()
    assert (chosen <= dist2.min(1).values + 8 * 2.0**-24 * scale).all()
    assert torch.allclose(out.commit_loss, (z - out.z_q).pow(2).mean())


def test_straight_through_passes_the_gradient_unchanged_and_codebook_gets_none():
    q = make_quantizer().eval()
    z = torch.randn(2, 5, 3, requires_grad=True)
    out = q(z)
    assert torch.allclose(out.z_q, q.codes_from_indices(out.indices), atol=1e-6)
    weights = torch.randn_like(z)
    (out.z_q * weights).sum().backward()
    assert torch.equal(z.grad, weights)
    assert not any(b.requires_grad for b in q.buffers())

    z.grad = None
    q(z).commit_loss.backward()  # pulls z_e towards its (fixed) codes only
    assert torch.allclose(z.grad, 2 * (z - out.z_q.detach()) / z.numel())


def test_ema_moves_used_codes_to_their_vectors_and_leaves_unused_codes_unchanged():
    q = make_quantizer(decay=0.9).train()
    codes = torch.tensor([[0.0, 0, 0], [5, 5, 5], [-5, 5, 0], [9, 9, 9], [-9, 0, 9], [0, -9, 0]])
    q.embedding.copy_(codes)
    z1 = torch.tensor([[[0.5, 0, 0], [0.3, 0.1, 0], [5, 6, 5]]])  # two near code 0, one near 1
    out = q(z1)
    assert out.indices.tolist() == [[0, 0, 1]]
    # Averages start at zero, so a code's first update is the mean of its vectors.
    assert torch.allclose(q.embedding[0], torch.tensor([0.4, 0.05, 0.0]))
    assert torch.allclose(q.embedding[1], torch.tensor([5.0, 6.0, 5.0]))
    assert torch.equal(q.embedding[2:], codes[2:])

    before = buffers(q)
    z2 = torch.tensor([[[1.0, 0, 0], [9, 9, 8]]])
    out = q(z2)
    assert out.indices.tolist() == [[0, 3]]
    # Hand-computed EMA for code 0: sizes 0.9*0.2 + 0.1*1, sums 0.9*0.1*(0.8, 0.1, 0) + 0.1*z.
    size = 0.9 * 0.2 + 0.1
    expected = (0.9 * 0.1 * torch.tensor([0.8, 0.1, 0.0]) + 0.1 * torch.tensor([1.0, 0, 0])) / size
    assert torch.allclose(q.embedding[0], expected)
    assert torch.dist(q.embedding[0], z2[0, 0]) < torch.dist(before["embedding"][0], z2[0, 0])
    assert torch.allclose(q.embedding[3], torch.tensor([9.0, 9, 8]))
    for k in (1, 2, 4, 5):  # received nothing this step: exactly unchanged
        assert torch.equal(q.embedding[k], before["embedding"][k])
    assert torch.allclose(q.cluster_size[1], 0.9 * before["cluster_size"][1])


def test_no_update_in_eval_mode_or_through_quantize():
    q = make_quantizer(threshold=1.0)
    z = torch.randn(3, 4, 3)
    before = buffers(q)
    q.eval()(z)
    q.train().quantize(z)
    for k, v in q.named_buffers():
        assert torch.equal(v, before[k]), k


def test_dead_codes_are_reseeded_from_batch_vectors_and_live_ones_kept():
    q = make_quantizer(num_codes=5, decay=0.9, threshold=1.0).train()
    codes = torch.tensor([[0.0, 0, 0], [5, 5, 5], [-5, 5, 0], [9, 9, 9], [-9, 0, 9]])
    q.embedding.copy_(codes)
    # Codes 0 and 1 are alive (used a lot lately); 2 is alive but unused in this batch;
    # 3 and 4 are dead.
    q.cluster_size.copy_(torch.tensor([10.0, 10.0, 10.0, 0.5, 0.0]))
    q.embedding_sum.copy_(codes * q.cluster_size[:, None])
    z = torch.tensor([[[0.2, 0, 0], [5, 5, 4.8], [0.1, 0.1, 0.1], [4.9, 5, 5]]])
    q(z)
    assert torch.equal(q.embedding[2], codes[2])  # alive, unused: untouched
    assert q.cluster_size[2] == pytest.approx(9.0)
    for k in (3, 4):
        assert any(torch.equal(q.embedding[k], v) for v in z[0]), "re-seeded from the batch"
        assert q.cluster_size[k] == pytest.approx(1.0)
        assert torch.allclose(q.embedding_sum[k], q.embedding[k])  # consistent with size 1


def test_first_training_batch_seeds_the_codebook_from_data():
    q = make_quantizer(num_codes=16, dim=4, threshold=1.0).train()
    z = torch.randn(8, 8, 4) * 0.01 + 3.0  # far from the N(0, I) initial codes
    assert q(z).perplexity < 2  # every vector takes the same nearest initial code
    rows = z.reshape(-1, 4)
    from_batch = sum(bool((rows == code).all(1).any()) for code in q.embedding)
    assert from_batch == 15  # all but the one code that was used, which moved to the mean
    assert q(z).perplexity > 4  # now the codes sit among the data


def test_perplexity_counts_effectively_used_codes():
    q = make_quantizer(num_codes=4, dim=2).eval()
    q.embedding.copy_(torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]]))
    uniform = q.embedding[torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])].view(1, 8, 2)
    assert q(uniform).perplexity.item() == pytest.approx(4.0, rel=1e-5)
    assert q(torch.zeros(1, 8, 2)).perplexity.item() == pytest.approx(1.0, rel=1e-5)
    half = q.embedding[torch.tensor([0, 0, 1, 1])].view(1, 4, 2)
    assert q(half).perplexity.item() == pytest.approx(2.0, rel=1e-5)


def test_wrong_vector_size_is_refused():
    q = make_quantizer(dim=3)
    with pytest.raises(ValueError, match="size 3"):
        q(torch.randn(2, 4, 5))


def test_distributed_update_matches_single_process(tmp_path):
    """With one gloo process the all-reduce/broadcast path must give the same codebook."""
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    z = torch.randn(4, 8, 3)
    reference = make_quantizer(threshold=1.0, seed=1).train()
    torch.manual_seed(5)
    reference(z)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        q = make_quantizer(threshold=1.0, seed=1).train()
        torch.manual_seed(5)
        q(z)
    finally:
        dist.destroy_process_group()
    for (name, a), b in zip(reference.named_buffers(), q.buffers()):
        assert torch.equal(a, b), name

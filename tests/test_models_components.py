"""Each component of the fusion model: output shapes, gradient flow and the papers' settings."""

import pytest
import torch
from timm.layers import HybridEmbed

from models.alignment import CrossModalAlignment, RelevanceScoring, straight_through_select
from models.attention import ConcatKeyAttention, HierarchicalAttention
from models.config import FusionConfig
from models.gnn import ChebGNNEncoder
from models.graph import ChebGraphEncoder, build_vision_graphs, knn_edges
from models.hnf import HierarchicalNetworkFusion, MixtureOfExpertsGate
from models.lmm import PredictionEmbedding
from models.ode import BidirectionalNeuralODE
from models.text import AttentionPooling, TextBranch
from models.vit import ViTEncoder

torch.set_num_threads(1)
D = 64


def stem_features(b: int) -> list[torch.Tensor]:
    """Random stand-ins for the stem's stride-8/16/32 maps of b 224 px images."""
    return [torch.randn(b, c, 224 // r, 224 // r) for c, r in ((40, 8), (112, 16), (320, 32))]


def assert_all_parameters_get_gradients(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} received no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_vit_encoder_without_stem_gives_cls_embedding_of_width_d_with_paper_patching():
    vit = ViTEncoder(FusionConfig(stem="none"))
    assert vit.vit.patch_embed.patch_size == (32, 32)
    assert vit.vit.pos_embed.shape == (1, 7 * 7 + 1, D)
    out = vit(torch.randn(2, 1, 224, 224))
    assert out.shape == (2, D)
    out.square().sum().backward()
    assert_all_parameters_get_gradients(vit)


def test_knn_edges_join_similar_features_regardless_of_position():
    # nodes 0 and 5 are alike, as are 1 and 4; 2 and 3 point elsewhere
    feats = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1], [0, 1.1, 0.1],
                          [1.0, 0.1, 0]])
    edges = knn_edges(feats, k=1)
    pairs = set(map(tuple, edges.T.tolist()))
    assert {(0, 5), (5, 0), (1, 4), (4, 1)} <= pairs
    assert all(a != b for a, b in pairs)
    assert pairs == {(b, a) for a, b in pairs}  # undirected


def test_vision_graph_adds_a_virtual_node_linked_both_ways_to_every_patch():
    feats = torch.randn(2, 9, D)
    batch = build_vision_graphs(feats, feats, k=3, virtual=torch.zeros(2, D))
    assert batch.num_graphs == 2 and batch.x.shape == (20, D)
    edges = set(map(tuple, batch.edge_index.T.tolist()))
    for g in range(2):
        hub = g * 10 + 9
        for node in range(g * 10, hub):
            assert (node, hub) in edges and (hub, node) in edges


def test_cheb_graph_encoder_shapes_and_gradients():
    feats = torch.randn(2, 16, D, requires_grad=True)
    encoder = ChebGraphEncoder(D, order=3)
    out = encoder(build_vision_graphs(feats, feats, k=4, virtual=torch.zeros(2, D)))
    assert out.shape == (34, D) and (out >= 0).all()  # ReLU of eq. 16
    out.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_neural_ode_directions_are_causal_and_the_gate_mixes_both():
    torch.manual_seed(0)
    ode = BidirectionalNeuralODE(D, 4, 128, steps=2)
    tokens = torch.randn(1, 8, D)
    changed = tokens.clone()
    changed[0, 5] += torch.randn(D)  # not a constant shift: LayerNorm would remove it
    with torch.no_grad():
        fwd_a = ode._integrate(ode.forward_field, tokens)
        fwd_b = ode._integrate(ode.forward_field, changed)
    # forward ODE: token 2 only sees tokens <= 2; the <cls> token (last) sees all
    assert torch.allclose(fwd_a[0, :5], fwd_b[0, :5], atol=1e-6)
    assert not torch.allclose(fwd_a[0, -1], fwd_b[0, -1])
    out = ode(tokens.requires_grad_())
    assert out.shape == (1, 8, D) and ((out > 0) & (out < 1)).all()  # outer sigmoid, eq. 21
    out[0, 0].sum().backward()
    assert tokens.grad[0, 6].abs().sum() > 0  # token 0 hears later tokens via the reverse ODE
    assert_all_parameters_get_gradients(ode)


def test_hybrid_vit_reads_the_stride_16_map_in_tokens_of_32_pixels():
    vit = ViTEncoder(FusionConfig())
    assert isinstance(vit.vit.patch_embed, HybridEmbed)
    assert vit.vit.patch_embed.patch_size == (2, 2)  # 2 x 2 cells of 16 px = the paper's 32 px
    assert vit.vit.pos_embed.shape == (1, 7 * 7 + 1, D)
    out = vit(stem_features(2))
    assert out.shape == (2, D)
    out.square().sum().backward()
    assert_all_parameters_get_gradients(vit)


def test_hnf_on_the_stem_pools_its_features_over_each_patch_window():
    hnf = HierarchicalNetworkFusion(FusionConfig())
    assert [layer.embed.grid for layer in hnf.layers] == [14, 8, 7]
    assert [layer.embed.proj.in_features for layer in hnf.layers] == [40 + 112 + 320] * 3
    similarity, patches = hnf.layers[0].embed(stem_features(2))
    assert similarity.shape == (2, 196, 472) and patches.shape == (2, 196, D)
    out = hnf(stem_features(2))
    assert out.shape == (2, D)
    out.square().sum().backward()
    assert_all_parameters_get_gradients(hnf)


def test_hnf_uses_three_scales_and_gives_fused_embedding_with_gradients():
    config = FusionConfig(stem="none")
    hnf = HierarchicalNetworkFusion(config)
    assert [layer.k for layer in hnf.layers] == [10, 6, 4]
    assert [layer.embed.position.shape[1] for layer in hnf.layers] == [196, 64, 49]
    out = hnf(torch.randn(2, 1, 224, 224))
    assert out.shape == (2, D)
    out.square().sum().backward()
    assert_all_parameters_get_gradients(hnf)


def test_moe_gate_is_a_convex_mixture_of_cls_and_virtual_node():
    gate = MixtureOfExpertsGate(D)
    cls, virtual = torch.zeros(3, D), torch.ones(3, D)
    mixed = gate(cls, virtual)
    assert ((mixed >= 0) & (mixed <= 1)).all()
    assert torch.allclose(mixed, mixed[:, :1].expand_as(mixed))


@pytest.mark.parametrize("stem", ["none", "efficientnet_lite0"])
def test_gnn_baseline_uses_patch_32_and_k_5(stem):
    gnn = ChebGNNEncoder(FusionConfig.ablation("gnn_only", stem=stem))
    assert gnn.k == 5 and gnn.embed.position.shape[1] == 49
    out = gnn(torch.randn(2, 1, 224, 224) if stem == "none" else stem_features(2))
    assert out.shape == (2, D)
    out.square().sum().backward()
    assert_all_parameters_get_gradients(gnn)


def test_attention_pooling_ignores_padding():
    pool = AttentionPooling(8)
    states = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    pooled = pool(states, mask)
    garbage = states.clone()
    garbage[1, 2:] = 1e3
    assert torch.allclose(pool(garbage, mask)[1], pooled[1])
    alpha = torch.softmax(states[1, :2] @ pool.u, dim=0)
    assert torch.allclose(pooled[1], (alpha[:, None] * states[1, :2]).sum(0), atol=1e-6)


@pytest.fixture(scope="module")
def text_branch():
    long_text = "Nanowires are one-dimensional crystals grown by vapour-liquid-solid. " * 60
    return TextBranch(FusionConfig(n_classes=2), ["Porous sponge with open pores.", long_text])


def test_text_branch_chunks_long_descriptions_and_caches_frozen_states(text_branch):
    calls = []
    hook = text_branch.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        states, mask = text_branch.token_states()
        calls.clear()
        text_branch.train()
        first = text_branch()
        second = text_branch()
    finally:
        hook.remove()
    assert mask[1].sum() > 256  # the long description spans several 256-token windows
    assert mask[0].sum() < 20
    assert states.shape[-1] == 384  # MiniLM width
    assert first.shape == (2, D) and torch.equal(first, second)
    assert len(calls) <= 1  # frozen encoder: one pass per description set
    assert not any(p.requires_grad for p in text_branch.encoder.parameters())
    first.sum().backward()
    assert text_branch.pool.u.grad is not None and text_branch.project.weight.grad is not None


def test_straight_through_selection_returns_argmax_row_with_soft_gradient():
    scores = torch.tensor([[0.1, 2.0, 0.3]], requires_grad=True)
    table = torch.randn(3, D)
    chosen = straight_through_select(scores, table, temperature=0.1)
    assert torch.allclose(chosen, table[1:2])
    chosen.sum().backward()
    assert scores.grad.abs().sum() > 0


def test_cross_modal_alignment_and_relevance_scoring_pick_a_class_text():
    h_text = torch.randn(5, D, requires_grad=True)
    image = torch.randn(3, D)
    align = CrossModalAlignment(D, 4, 0.1)
    best, sim = align(image, h_text)
    assert sim.shape == (3, 5) and ((sim >= -1) & (sim <= 1)).all()
    assert torch.allclose(best, h_text[sim.argmax(1)])
    relevance = RelevanceScoring(D, 0.1)
    best2, scores = relevance(image, h_text)
    assert torch.allclose(best2, h_text[scores.argmax(1)])
    (best.sum() + best2.sum()).backward()
    assert_all_parameters_get_gradients(align)
    assert_all_parameters_get_gradients(relevance)


def test_prediction_embedding_projects_one_hot_and_uses_no_answer_for_minus_one():
    emb = PredictionEmbedding(4, D)
    out = emb(torch.tensor([2, -1]))
    assert torch.allclose(out[0], emb.project.weight[:, 2])
    assert torch.allclose(out[1], emb.no_answer)
    out.sum().backward()
    assert_all_parameters_get_gradients(emb)


def test_concat_key_attention_implements_eq_7_to_13():
    attention = ConcatKeyAttention(2, D, 4, (0, 1))
    a, b = torch.randn(3, D), torch.randn(3, D)
    out = attention([a, b])
    assert out.shape == (3, D)
    assert attention.last_weights.shape == (3, 4, 2)
    assert torch.allclose(attention.last_weights.sum(-1), torch.ones(3, 4))
    q = (attention.q[0](a) + attention.q[1](b)).view(3, 4, 16)
    k = torch.stack([attention.k[0](a), attention.k[1](b)], 1).view(3, 2, 4, 16)
    expected = torch.softmax(torch.einsum("bhd,bnhd->bhn", q, k) / 4.0, -1)
    assert torch.allclose(attention.last_weights, expected, atol=1e-6)


def test_residual_attention_adds_the_query_inputs_back_and_normalises():
    printed = ConcatKeyAttention(2, D, 4, (0, 1), residual=False)
    residual = ConcatKeyAttention(2, D, 4, (0, 1), residual=True)
    residual.load_state_dict(printed.state_dict(), strict=False)
    a, b = torch.randn(3, D), torch.randn(3, D)
    expected = torch.nn.functional.layer_norm((a + b) / 2 + printed([a, b]), (D,))
    assert printed.norm is None
    assert torch.allclose(residual([a, b]), expected, atol=1e-5)


def test_checkpoint_configs_from_before_the_residual_switch_keep_the_printed_attention():
    assert FusionConfig().fusion_norm is True
    old = FusionConfig().to_dict()
    del old["fusion_norm"]
    assert FusionConfig.from_dict(old).fusion_norm is False
    assert FusionConfig.from_dict(FusionConfig().to_dict()).fusion_norm is True


def test_hierarchical_attention_second_stage_listens_to_the_prediction():
    torch.manual_seed(0)
    hier = HierarchicalAttention(4, True, D, 4)
    stage1 = [torch.randn(2, D) for _ in range(4)]
    h_cross, h_img_text = hier(stage1, torch.randn(2, D))
    h_cross2, h_img_text2 = hier(stage1, torch.randn(2, D))
    assert torch.equal(h_img_text, h_img_text2) and not torch.allclose(h_cross, h_cross2)
    # a random projection: the plain sum of a LayerNorm output is flat in its inputs
    (h_cross * torch.randn_like(h_cross)).sum().backward()
    assert_all_parameters_get_gradients(hier)


def test_adjoint_integration_matches_direct_backpropagation():
    torch.manual_seed(0)
    direct = BidirectionalNeuralODE(D, 4, 64, steps=2)
    adjoint = BidirectionalNeuralODE(D, 4, 64, steps=2, adjoint=True)
    adjoint.load_state_dict(direct.state_dict())
    tokens = torch.randn(1, 10, D)
    out_direct, out_adjoint = direct(tokens), adjoint(tokens)
    assert torch.allclose(out_direct, out_adjoint, atol=1e-5)
    out_direct.sum().backward()
    out_adjoint.sum().backward()
    g_direct = direct.forward_field.time.grad
    g_adjoint = adjoint.forward_field.time.grad
    # the adjoint solves the backward ODE with its own RK4 steps: close, not bit-equal
    assert torch.allclose(g_direct, g_adjoint, rtol=0.05, atol=1e-2)


def test_inference_cache_of_text_embeddings_follows_weight_updates(text_branch):
    text_branch.eval()
    with torch.no_grad():
        before = text_branch()
        assert text_branch() is before  # cached between frames
    optimizer = torch.optim.Adam(text_branch.project.parameters(), lr=0.1)
    text_branch().sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = text_branch()
    assert not torch.allclose(before, after)
    assert torch.allclose(after, text_branch.project(text_branch.pool(*text_branch._states())))

"""The models' front end (lightfmp.embedding.FieldEmbedding) against a per-field float64 loop: multi-hot fields are
the mean of their real tokens' rows times the gate, a row of padding only gives 0; ids from outside read the OOV row."""
import torch

from lightfmp.models import ModelConfig, build_model
from lightfmp.schema import OOV_ID, PAD_ID, FeatureSchema, Field
from lightfmp.embedding import FieldEmbedding

SCHEMA = FeatureSchema("y", [Field("a", "categorical", vocab=["x", "y", "z"]),
                             Field("t", "multi_hot", vocab=list("pqrs"), separator="|", max_len=3),
                             Field("u", "multi_hot", vocab=list("jk"), separator="|", max_len=2)])
# slots: a | t t t | u u; padding in the middle, a row of padding only, a repeated token
IDS = torch.tensor([[2, 2, PAD_ID, 3, 3, 2],
                    [4, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
                    [1, 5, 5, 4, 2, PAD_ID]])


def _reference(emb: FieldEmbedding, ids: torch.Tensor, gates: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[B, F, D]: per field, the mean over its real tokens of their rows (a categorical field: its one row), times
    the field's gate."""
    offsets, out = emb.field_offsets.tolist(), []
    slot_field = emb.slot_field.tolist()
    for b in range(ids.shape[0]):
        row = []
        for f, field in enumerate(SCHEMA.fields):
            slots = [s for s in range(ids.shape[1]) if slot_field[s] == f]
            toks = [int(ids[b, s]) for s in slots if field.kind != "multi_hot" or int(ids[b, s]) != PAD_ID]
            vecs = [table[offsets[f] + t] for t in toks]
            mean = torch.stack(vecs).mean(0) if vecs else torch.zeros(table.shape[1], dtype=table.dtype)
            row.append(mean * gates[f])
        out.append(torch.stack(row))
    return torch.stack(out)


def test_multi_hot_fields_are_the_mean_of_their_real_tokens_forward_and_backward():
    torch.manual_seed(0)
    emb = FieldEmbedding(SCHEMA, 4, linear=True).double()
    with torch.no_grad():
        emb.linear.normal_()
    gates = torch.tensor([0.7, 1.3, 0.4], dtype=torch.float64, requires_grad=True)
    e, lin = emb(IDS, gates)
    w_out, l_out = torch.randn_like(e), torch.randn_like(lin)
    (e * w_out).sum().add((lin * l_out).sum()).backward()
    got = (e.detach(), lin.detach(), emb.weight.grad.clone(), emb.linear.grad.clone(), gates.grad.clone())

    table, linear = emb.weight.detach().clone().requires_grad_(), emb.linear.detach().clone().requires_grad_()
    g = gates.detach().clone().requires_grad_()
    ref_e, ref_l = _reference(emb, IDS, g, table), _reference(emb, IDS, g, linear).squeeze(-1)
    (ref_e * w_out).sum().add((ref_l * l_out).sum()).backward()
    want = (ref_e.detach(), ref_l.detach(), table.grad, linear.grad, g.grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[0][1, 1], torch.zeros(4, dtype=torch.float64))  # padding only: 0


def test_a_float64_model_without_gates_reads_its_multi_hot_fields():
    model = build_model("deepfm", SCHEMA, ModelConfig(embed_dim=4, hidden=[8]), gated=False).double().eval()
    out = model(IDS, model.gate_values())  # float32 ones as the gates: cast to the table's dtype
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_an_id_outside_its_field_reads_the_oov_row_when_scoring_as_the_exported_graph_does():
    schema = FeatureSchema("y", [Field("a", "categorical", vocab=["x", "y", "z"]),
                                 Field("b", "categorical", vocab=["u", "v"])])
    model = build_model("deepfm", schema, ModelConfig(embed_dim=4, hidden=[8]), gated=True).eval()
    with torch.no_grad():
        oov = model(torch.tensor([[OOV_ID, 2], [2, OOV_ID]]))
        for bad in (5, 6, -1):  # field a has rows 0-4: 5 would be field b's first row
            outside = model(torch.tensor([[bad, 2], [2, bad]]))
            assert torch.equal(outside, oov), bad

"""Junk directions: a vector planted in the residual stream must come back out, at the layer where
it was planted and nowhere earlier; padding must not move the means; the random control must be
unit and orthogonal; the artifacts must round-trip; selection must explain itself or fail."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import save_hf_checkpoint
from safetensors.torch import save_file

from unlearn_interp import cli, data, directions, models
from unlearn_interp.directions import Direction, Subspace
from unlearn_interp.errors import UnlearnInterpError
from unlearn_interp.interventions import Variant, add_vector_hook

PROMPTS = [
    "The quick brown fox",
    "A multiple choice question about biology has four answers.",
    "Residual",
    "Answer: A. B.",
    "the lazy dog jumps over the fox and the cat",
    "biology",
]
PLANTED_LAYER = 1
SCALE = 5.0
BASE = Variant("base")


def steered(
    vector: torch.Tensor, scale: float = SCALE, layer: int = PLANTED_LAYER, **kw
) -> Variant:
    """A stand-in for an unlearned model: adds ``scale * vector`` to the residual stream."""
    hook = (models.resid_hook(layer), add_vector_hook(vector, scale=scale, **kw))
    return Variant("steered", hooks=(hook,))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.fixture
def planted():
    return directions.random_direction(32, seed=1)


# ---------------------------------------------------------------------------------------------
# Recovering a planted vector, and why that layer
# ---------------------------------------------------------------------------------------------


def test_planted_vector_is_recovered_at_its_layer(tiny_model, planted):
    d = directions.junk_direction(tiny_model, BASE, steered(planted), PROMPTS, PLANTED_LAYER)
    assert cos(d.vector, planted) > 0.99
    assert d.raw_norm == pytest.approx(SCALE, rel=1e-5)
    assert (d.layer, d.positions, d.n_prompts, d.method) == (1, "last", 6, "diff_in_means")
    assert d.vector.dtype == torch.float32 and float(d.vector.norm()) == pytest.approx(1, abs=1e-6)


def test_candidates_show_why_the_planted_layer_is_chosen(tiny_model, planted):
    cands = directions.candidate_directions(
        tiny_model, BASE, steered(planted), PROMPTS, control_vectors=planted[None]
    )
    scores = cands.scores.set_index("layer")
    assert cands.vectors.shape == (3, 32)
    # Before the planted layer nothing differs; at it the whole difference is the vector.
    assert scores.loc[0, "raw_norm"] < 1e-6 and scores.loc[0, "zero"]
    assert scores.loc[1, "raw_norm"] == pytest.approx(SCALE, rel=1e-5)
    assert scores.loc[1, "cos_control"] > 0.999
    # Downstream the block's response mixes in other directions.
    assert scores.loc[2, "cos_control"] < scores.loc[1, "cos_control"] - 0.01
    d = directions.select_direction(cands, min_cos_control=0.99)
    assert d.layer == PLANTED_LAYER and cos(d.vector, planted) > 0.99


def test_select_direction_keeps_every_score_and_the_runner_up(tiny_model, planted):
    cands = directions.candidate_directions(
        tiny_model, BASE, steered(planted), PROMPTS, control_vectors=planted[None]
    )
    by_norm = directions.select_direction(cands, prefer="raw_norm")
    by_control = directions.select_direction(cands, prefer="cos_control")
    by_jump = directions.select_direction(cands, prefer="norm_jump")
    assert by_norm.layer == 2 and by_control.layer == 1  # layer 2's raw norm is larger
    assert by_jump.layer == 1  # but layer 1 is where the difference is written
    selection = by_control.metadata["selection"]
    assert selection["runner_up"]["layer"] == 2
    assert selection["chosen"]["cos_control"] > 0.999
    assert selection["thresholds"] == {"min_raw_norm": 0.0}
    assert [row["passes"] for row in selection["table"]] == [False, True, True]
    assert [row["selected"] for row in selection["table"]] == [False, True, False]
    json.dumps(selection, allow_nan=False)  # standard JSON: NaN scores become null


def test_select_direction_fails_naming_the_thresholds(tiny_model, planted):
    cands = directions.candidate_directions(tiny_model, BASE, steered(planted), PROMPTS)
    with pytest.raises(UnlearnInterpError, match=r"min_raw_norm=1000\.0.*best raw_norm"):
        directions.select_direction(cands, min_raw_norm=1000.0)
    with pytest.raises(UnlearnInterpError, match="needs control vectors"):
        directions.select_direction(cands, min_cos_control=0.5)


def test_junk_direction_from_candidates_is_the_same_bits_without_a_forward_pass(
    tiny_model, planted
):
    unl = steered(planted)
    cands = directions.candidate_directions(
        tiny_model, BASE, unl, PROMPTS, control_vectors=planted[None], batch_size=4
    )  # every layer, as the pipeline scores them
    fresh = directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 2, batch_size=4)
    calls = {"n": 0}

    def count(activation, hook):
        calls["n"] += 1

    counting = unl.with_hooks(((models.resid_hook(0), count),))
    reused = directions.junk_direction(
        tiny_model, BASE, counting, PROMPTS, 2, batch_size=4, candidates=cands
    )
    assert calls["n"] == 0
    assert torch.equal(reused.vector, fresh.vector) and reused.raw_norm == fresh.raw_norm
    assert reused.to_dict()["layer"] == 2 and reused.metadata["scores"]["cos_control"] < 0.99
    with pytest.raises(UnlearnInterpError, match="scored at positions 'last' on 6 prompts"):
        directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 2, "all", candidates=cands)


def test_every_direction_is_built_from_its_origin(planted):
    origin = directions.Origin(layer=1, positions="last", n_prompts=6, model_name="m")
    d = Direction.at(origin, planted * 3, 3.0, "diff_in_means", {"k": 1})
    assert d.origin == origin and (d.layer, d.n_prompts, d.metadata) == (1, 6, {"k": 1})
    control = directions.random_control(d, seed=0)
    assert control.origin == directions.Origin(1, "last", 0, "m")


def test_cos_ones_betrays_a_uniform_control_vector(tiny_model):
    uniform = torch.rand(32)
    uniform /= uniform.norm()
    gaussian = directions.random_direction(32, seed=3)
    for vector, low, high in ((uniform, 0.7, 1.0), (gaussian, -0.5, 0.5)):
        cands = directions.candidate_directions(
            tiny_model, BASE, steered(vector), PROMPTS, layers=[1]
        )
        cos_ones = cands.scores["cos_ones"].iloc[0]
        assert cos_ones == pytest.approx(float(vector.sum()) / math.sqrt(32), abs=1e-5)
        assert low < cos_ones < high


def test_identical_variants_give_one_clear_sentence(tiny_model):
    for method in ("diff_in_means", "pca"):
        with pytest.raises(UnlearnInterpError, match="same activations at layer 1 on these 6"):
            directions.junk_direction(tiny_model, BASE, Variant("same"), PROMPTS, 1, method=method)


def test_bad_layer_positions_and_method_are_named(tiny_model, planted):
    unl = steered(planted)
    with pytest.raises(UnlearnInterpError, match="layer 3 is out of range"):
        directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 3)
    with pytest.raises(UnlearnInterpError, match="positions 'first'"):
        directions.mean_activations(tiny_model, PROMPTS, [0], positions="first")
    with pytest.raises(UnlearnInterpError, match="method 'svd'"):
        directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 1, method="svd")
    with pytest.raises(UnlearnInterpError, match="prompt list is empty"):
        directions.mean_activations(tiny_model, [], [0])


# ---------------------------------------------------------------------------------------------
# Masked means: padding, positions, one pass per batch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["last", "all", 0, 1, -2])
def test_padding_does_not_move_the_means(tiny_model, planted, positions):
    def both(**kw):
        return [
            directions.mean_activations(tiny_model, PROMPTS, [0, 2], positions, batch_size=b, **kw)
            for b in (1, len(PROMPTS))  # alone (no padding) / together (left-padded)
        ]

    alone, padded = both()
    torch.testing.assert_close(alone, padded, atol=1e-6, rtol=0)
    alone, padded = both(variant=steered(planted))
    torch.testing.assert_close(alone, padded, atol=1e-6, rtol=0)
    d1, d2 = (
        directions.junk_direction(
            tiny_model, BASE, steered(planted), PROMPTS, 2, positions, batch_size=b
        )
        for b in (1, len(PROMPTS))
    )
    torch.testing.assert_close(d1.vector, d2.vector, atol=1e-6, rtol=0)


def test_positions_select_the_tokens_they_name(tiny_model):
    """Each mean equals the mean over single-prompt runs of the token the positions name."""
    per_prompt = []
    for prompt in PROMPTS:
        batch = data.encode_batch(tiny_model.tokenizer, [prompt])
        _, cache = tiny_model.run_with_cache(batch.tokens, names_filter=models.resid_hook(1))
        per_prompt.append(cache[models.resid_hook(1)][0].double())  # [pos, d_model]
    expected = {
        "last": torch.stack([acts[-1] for acts in per_prompt]).mean(0),
        0: torch.stack([acts[0] for acts in per_prompt]).mean(0),
        1: torch.stack([acts[1] for acts in per_prompt]).mean(0),
        -2: torch.stack([acts[-2] for acts in per_prompt]).mean(0),
        "all": torch.cat(per_prompt).mean(0),  # every token weighs the same
    }
    for positions, want in expected.items():
        got = directions.mean_activations(tiny_model, PROMPTS, [1], positions, batch_size=4)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got[0], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        directions.mean_activations(tiny_model, PROMPTS, [1], -1),
        directions.mean_activations(tiny_model, PROMPTS, [1], "last"),
    )


def test_select_positions_on_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    tokens = torch.zeros_like(mask)
    left = data.Batch(tokens, mask)
    right = data.Batch(tokens, mask.flip(1))
    picks = {
        (left, "last"): [4, 4],
        (right, "last"): [2, 4],
        (left, 0): [2, 0],
        (right, 0): [0, 0],
        (left, -2): [3, 3],
        (right, 1): [1, 1],
    }
    for (batch, positions), cols in picks.items():
        chosen = directions.select_positions(batch, positions)
        assert chosen.sum(dim=1).tolist() == [1, 1]
        assert chosen.int().argmax(dim=1).tolist() == cols
    assert torch.equal(directions.select_positions(right, "all"), right.attention_mask.bool())
    with pytest.raises(
        UnlearnInterpError, match="positions 3 does not exist in prompt 10, which has 3"
    ):
        directions.select_positions(left, 3, first_prompt=10)


def test_one_pass_per_batch_stopped_after_the_deepest_layer_and_no_hook_left(tiny_model):
    calls = {"blocks.0.hook_resid_post": 0, "blocks.2.hook_resid_post": 0}

    def count(activation, hook):
        calls[hook.name] += 1

    counting = Variant("counting", hooks=tuple((name, count) for name in calls))
    directions.mean_activations(tiny_model, PROMPTS, [0, 1], variant=counting, batch_size=4)
    assert calls == {"blocks.0.hook_resid_post": 2, "blocks.2.hook_resid_post": 0}
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())


# ---------------------------------------------------------------------------------------------
# The alternative methods
# ---------------------------------------------------------------------------------------------


def test_forget_minus_retain_is_unlearned_forget_mean_minus_retain_mean(tiny_model, planted):
    unl = steered(planted)
    forget, retain = PROMPTS[:3], PROMPTS[3:]
    d = directions.junk_direction(
        tiny_model, None, unl, forget, 2, method="forget_minus_retain", retain_prompts=retain
    )
    means = [
        directions.mean_activations(tiny_model, p, [2], variant=unl)[0] for p in (forget, retain)
    ]
    assert cos(d.vector, means[0] - means[1]) > 1 - 1e-6
    assert d.raw_norm == pytest.approx(float((means[0] - means[1]).norm()), rel=1e-6)
    with pytest.raises(UnlearnInterpError, match="needs retain_prompts"):
        directions.junk_direction(tiny_model, None, unl, forget, 2, method="forget_minus_retain")


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pca_finds_the_dominant_axis_pointing_along_the_mean(tiny_model, planted, sign):
    side = directions.random_direction(32, seed=2, orthogonal_to=planted)
    unl = steered(planted, scale=4.0 * sign).with_hooks(
        [(models.resid_hook(1), add_vector_hook(side, scale=3.0, positions=-1))]
    )  # every token gets 4v, the last tokens also get 3w
    pca = directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 1, "all", method="pca")
    mean = directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 1, "all")
    assert sign * cos(pca.vector, planted) > 0.99
    assert cos(pca.vector, mean.vector) > 0.9  # same sign as the mean difference
    assert pca.metadata["explained_second_moment"] > 0.9


def test_outlier_filter_drops_attention_sink_tokens(tiny_model, planted):
    side = directions.random_direction(32, seed=2, orthogonal_to=planted)
    unl = steered(planted, scale=1.0).with_hooks(
        [(models.resid_hook(1), add_vector_hook(side, scale=100.0, positions=0))]
    )  # batch_size=1: position 0 is each prompt's BOS, which gets a huge extra push
    kw = dict(positions="all", batch_size=1)
    plain = directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 1, **kw)
    filtered = directions.junk_direction(tiny_model, BASE, unl, PROMPTS, 1, outlier_z=2.0, **kw)
    assert cos(plain.vector, planted) < 0.5
    assert cos(filtered.vector, planted) > 0.999
    assert filtered.metadata["n_dropped"] == len(PROMPTS)
    assert filtered.raw_norm == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The random control
# ---------------------------------------------------------------------------------------------


def test_random_direction_is_unit_reproducible_and_orthogonal_when_asked(planted):
    r = directions.random_direction(4096, seed=0)
    assert float(r.norm()) == pytest.approx(1.0, abs=1e-6) and r.shape == (4096,)
    assert torch.equal(r, directions.random_direction(4096, seed=0))
    assert abs(float(r @ directions.random_direction(4096, seed=1))) < 0.1
    o = directions.random_direction(32, seed=0, orthogonal_to=planted)
    assert abs(float(o @ planted)) < 1e-6 and float(o.norm()) == pytest.approx(1.0, abs=1e-6)
    several = torch.randn(5, 32)
    o5 = directions.random_direction(32, seed=0, orthogonal_to=several)
    assert (several @ o5).abs().max() / several.norm(dim=1).max() < 1e-6
    with pytest.raises(UnlearnInterpError, match="cannot be orthogonal to 32 directions"):
        directions.random_direction(32, seed=0, orthogonal_to=torch.randn(32, 32))


# ---------------------------------------------------------------------------------------------
# The artifact
# ---------------------------------------------------------------------------------------------


def test_direction_save_load_round_trip(tmp_path, planted):
    d = Direction(planted * 3, 3.0, 7, "last", 5, "diff_in_means", "m", {"cos": math.nan, "k": [1]})
    d.save(tmp_path / "run")
    d.save(tmp_path / "named.safetensors")
    for where in (tmp_path / "run", tmp_path / "named.safetensors", tmp_path / "named.json"):
        back = Direction.load(where)
        assert torch.equal(back.vector, d.vector)
        assert (back.layer, back.positions, back.n_prompts, back.raw_norm) == (7, "last", 5, 3.0)
        assert back.metadata == {"cos": None, "k": [1]}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "direction.json",
        "direction.safetensors",
    ]


def test_selected_direction_without_controls_round_trips(tmp_path, tiny_model, planted):
    cands = directions.candidate_directions(tiny_model, BASE, steered(planted), PROMPTS)
    d = directions.select_direction(cands, min_raw_norm=1.0)
    d.save(tmp_path)
    json.loads((tmp_path / "direction.json").read_text(), parse_constant=pytest.fail)
    back = Direction.load(tmp_path)
    assert back.metadata["selection"]["chosen"]["control_index"] is None
    assert back.metadata["selection"]["thresholds"] == {"min_raw_norm": 1.0}


def test_random_control_is_norm_matched_and_orthogonal(planted):
    junk = Direction(planted, 5.0, 1, "last", 6, "diff_in_means", "m")
    control = directions.random_control(junk, seed=4)
    assert (control.layer, control.raw_norm, control.method) == (1, 5.0, "random")
    assert abs(float(control.vector @ junk.vector)) < 1e-6


def test_load_refuses_nan_and_mismatched_shapes(tmp_path, planted):
    d = Direction(planted, 1.0, 0, -1, 1, "pca", "m")
    d.save(tmp_path)
    meta = json.loads((tmp_path / "direction.json").read_text())
    (tmp_path / "direction.json").write_text(json.dumps({**meta, "d_model": 64}))
    with pytest.raises(UnlearnInterpError, match="d_model 64 but the vector has 32"):
        Direction.load(tmp_path)
    save_file({"vector": torch.full((32,), math.nan)}, str(tmp_path / "direction.safetensors"))
    with pytest.raises(UnlearnInterpError, match="NaN"):
        Direction.load(tmp_path)
    save_file({"vector": torch.ones(2, 16)}, str(tmp_path / "direction.safetensors"))
    with pytest.raises(UnlearnInterpError, match="expected \\[d_model\\]"):
        Direction.load(tmp_path)
    with pytest.raises(UnlearnInterpError, match="does not exist"):
        Direction.load(tmp_path / "elsewhere")


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def prompts_loader(monkeypatch):
    """data.load_prompts is written elsewhere; a minimal .txt reader stands in until it exists."""
    if not hasattr(data, "load_prompts"):

        def load_prompts(path):
            return [line for line in Path(path).read_text().splitlines() if line.strip()]

        monkeypatch.setattr(data, "load_prompts", load_prompts, raising=False)


@pytest.fixture
def run_setup(tmp_path, tokenizer, prompts_loader):
    ckpt = save_hf_checkpoint("gpt2", tmp_path / "base", tokenizer)
    model = models.load_model(ckpt, device="cpu")
    w_out = models.get_param(model, models.mlp_out_param(1)).detach()
    run = tmp_path / "run"
    models.save_weights(
        {models.mlp_out_param(1): w_out + 0.5 * torch.randn_like(w_out)},
        run / "unlearned_weights.safetensors",
    )
    models.save_weights({"control_vectors": torch.rand(2, 32)}, run / "control_vectors.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return ckpt, run, prompts, model


def _cli(*args: str) -> int:
    return cli.main(["-q", "direction", *map(str, args)])


def test_cli_writes_direction_and_candidates(run_setup, tmp_path, capsys):
    ckpt, run, prompts, _ = run_setup
    out = tmp_path / "out"
    rc = _cli("--model", ckpt, "--run", run, "--prompts", prompts, "--all-layers", "--out", out)
    assert rc == 0, capsys.readouterr().err
    d = Direction.load(out)
    table = (out / "tables" / "direction_candidates.csv").read_text().splitlines()
    header = table[0].split(",")
    assert len(table) == 4 and {"raw_norm", "cos_control", "passes", "selected"} <= set(header)
    assert d.layer in (1, 2)  # block 1's W_out changed: layer 0 cannot differ
    assert d.metadata["selection"]["table"][0]["zero"] is True
    assert "direction at layer" in capsys.readouterr().out

    rc = _cli("--model", ckpt, "--run", run, "--prompts", prompts, "--layer", 1, "--out", out)
    assert rc == 0 and Direction.load(out).layer == 1


def test_extract_selects_a_layer_then_applies_the_method(tiny_model, planted):
    d, cands = directions.extract_direction(
        tiny_model,
        BASE,
        steered(planted),
        PROMPTS,
        all_layers=True,
        method="pca",
        control_vectors=planted[None],
        min_cos_control=0.99,
    )
    assert (d.layer, d.method) == (1, "pca") and cos(d.vector, planted) > 0.99
    assert d.metadata["selection"]["chosen"]["layer"] == 1 and len(cands.scores) == 3
    with pytest.raises(UnlearnInterpError, match="give a layer"):
        directions.extract_direction(tiny_model, BASE, steered(planted), PROMPTS)


def test_cli_reads_an_unlearned_checkpoint(run_setup, tmp_path, tokenizer):
    import transformers

    ckpt, _, prompts, _ = run_setup
    hf = transformers.GPT2LMHeadModel.from_pretrained(ckpt)
    with torch.no_grad():
        hf.transformer.h[1].mlp.c_proj.weight.add_(
            0.5 * torch.randn_like(hf.transformer.h[1].mlp.c_proj.weight)
        )
    hf.save_pretrained(tmp_path / "unlearned")
    tokenizer.save_pretrained(tmp_path / "unlearned")
    out = tmp_path / "out"
    args = ("--model", ckpt, "--unlearned", tmp_path / "unlearned", "--prompts", prompts)
    assert _cli(*args, "--layer", 1, "--positions", "all", "--method", "pca", "--out", out) == 0
    d = Direction.load(out)
    assert (d.layer, d.positions, d.method) == (1, "all", "pca")


def test_cli_bad_input_is_one_sentence_and_exit_2(run_setup, tmp_path, capsys):
    ckpt, run, prompts, model = run_setup
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    same = tmp_path / "same"
    name = models.mlp_out_param(1)
    models.save_weights(
        {name: models.get_param(model, name)}, same / "unlearned_weights.safetensors"
    )
    cases = [
        (("--run", run, "--prompts", prompts, "--layer", 9), "layer 9 is out of range"),
        (("--run", run, "--prompts", empty, "--layer", 1), "empty.txt"),
        (("--run", same, "--prompts", prompts, "--layer", 1), "same activations at layer 1"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert _cli("--model", ckpt, *args, "--out", tmp_path / "out") == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: loading progress
        assert last.startswith("unlearn-interp: error: ") and message in last


# ---------------------------------------------------------------------------------------------
# Subspaces: one direction per updated block
# ---------------------------------------------------------------------------------------------


def two_block_junk(v1: torch.Tensor, v2: torch.Tensor) -> Variant:
    """A stand-in for RMU updating two blocks: block 1 writes 5 v1, block 2 writes 50 v2."""
    hooks = (
        (models.resid_hook(1), add_vector_hook(v1, scale=5.0)),
        (models.resid_hook(2), add_vector_hook(v2, scale=50.0)),
    )
    return Variant("two_blocks", hooks=hooks)


def test_junk_subspace_spans_the_junk_of_both_blocks_in_one_pass_per_variant(tiny_model, planted):
    v2 = directions.random_direction(32, seed=2, orthogonal_to=planted)
    calls = {"n": 0}

    def count(activation, hook):
        calls["n"] += 1

    base = Variant("base", hooks=((models.resid_hook(0), count),))
    unl = two_block_junk(planted, v2).with_hooks(((models.resid_hook(0), count),))
    sub = directions.junk_subspace(
        tiny_model, base, unl, PROMPTS, [1, 2], control_vectors=torch.stack([planted, v2]),
        batch_size=4,
    )  # fmt: skip
    assert calls["n"] == 4  # 2 batches x (base, unlearned): every layer from the same pass
    assert (sub.k, sub.layers, sub.method, sub.n_prompts) == (2, (1, 2), "diff_in_means", 6)
    assert cos(sub.basis[0], planted) > 0.999  # row 0 is layer 1's direction, unchanged
    assert sub.raw_norms[0] == pytest.approx(5.0, rel=1e-5)
    gram = sub.basis.double() @ sub.basis.double().T
    assert (gram - torch.eye(2, dtype=torch.float64)).abs().max() < 1e-6
    # The single layer-2 direction misses most of v1 (block 2 writes ten times more); the span
    # holds both planted vectors.
    single = directions.junk_direction(tiny_model, BASE, unl, PROMPTS, layer=2)
    assert abs(cos(single.vector, planted)) < 0.3
    assert sub.cos_with(planted).item() > 0.999 and sub.cos_with(v2).item() > 0.98
    assert sub.metadata["cos_with_control_vectors"] == pytest.approx(
        sub.cos_with(torch.stack([planted, v2])).tolist()
    )
    assert sub.metadata["cosines"][0][1] == pytest.approx(cos(planted, single.vector), abs=1e-5)
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())


def test_candidates_subspace_needs_no_forward_pass_and_equals_junk_subspace(tiny_model, planted):
    v2 = directions.random_direction(32, seed=2)
    unl = two_block_junk(planted, v2)
    cands = directions.candidate_directions(tiny_model, BASE, unl, PROMPTS)  # every layer
    direct = directions.junk_subspace(tiny_model, BASE, unl, PROMPTS, [2, 1])
    from_cands = cands.subspace([2, 1])
    assert torch.allclose(direct.basis, from_cands.basis, atol=1e-6)
    assert direct.layers == from_cands.layers == (2, 1)
    first = directions.junk_direction(tiny_model, BASE, unl, PROMPTS, layer=2)
    assert torch.allclose(direct.basis[0], first.vector, atol=1e-6)
    assert direct.raw_norms[0] == pytest.approx(first.raw_norm, rel=1e-6)
    assert [row["layer"] for row in from_cands.metadata["scores"]] == [2, 1]
    with pytest.raises(UnlearnInterpError, match=r"layer 5 is not among the candidates"):
        cands.subspace([1, 5])


def test_layers_without_a_difference_are_dropped_and_recorded(tiny_model, planted):
    sub = directions.junk_subspace(tiny_model, BASE, steered(planted), PROMPTS, [0, 1])
    assert sub.layers == (1,) and sub.k == 1 and cos(sub.basis[0], planted) > 0.999
    assert sub.metadata["dropped"] == [{"layer": 0, "raw_norm": pytest.approx(0, abs=1e-5),
                                        "residual": 0.0}]  # fmt: skip
    with pytest.raises(UnlearnInterpError, match=r"all 1 vectors \(layers \[0\]\) are zero"):
        directions.junk_subspace(tiny_model, BASE, steered(planted), PROMPTS, [0])


def test_from_vectors_orthonormalises_in_float64_and_drops_dependent_vectors():
    e = torch.eye(6, dtype=torch.float64)
    vectors = torch.stack([3 * e[0], 2 * e[0] + 1e-7 * e[1], torch.zeros(6), e[0] + e[2]])
    sub = Subspace.from_vectors(vectors, layers=[4, 5, 6, 7])
    assert sub.layers == (4, 7) and sub.raw_norms == (3.0, pytest.approx(2**0.5))
    assert torch.allclose(sub.basis, torch.stack([e[0], e[2]]).float())
    dropped = sub.metadata["dropped"]
    assert [d["layer"] for d in dropped] == [5, 6]
    assert dropped[0]["residual"] == pytest.approx(5e-8, rel=1e-3) and dropped[1]["residual"] == 0
    assert sub.metadata["residuals"] == pytest.approx([1.0, 2**-0.5])
    assert sub.metadata["cosines"][0][3] == pytest.approx(2**-0.5)
    # Nearly parallel vectors (cos 0.999) still give rows orthonormal to float32 precision,
    # spanning exactly what they were given.
    g = torch.Generator().manual_seed(0)
    common = torch.randn(64, generator=g, dtype=torch.float64)
    close = common + 0.045 * torch.randn(5, 64, generator=g, dtype=torch.float64)
    sub = Subspace.from_vectors(close, layers=range(5))
    gram = sub.basis.double() @ sub.basis.double().T
    assert sub.k == 5 and (gram - torch.eye(5, dtype=torch.float64)).abs().max() < 1e-6
    assert (sub.cos_with(close) > 1 - 1e-6).all()
    # A looser rtol drops the vectors that add less than that share of new direction.
    assert Subspace.from_vectors(close, layers=range(5), rtol=0.5).k == 1


def test_subspace_save_load_round_trip(tmp_path):
    sub = Subspace.from_vectors(
        torch.randn(3, 32), [5, 6, 7], positions="all", n_prompts=9, model_name="m",
        metadata={"note": math.nan},
    )  # fmt: skip
    sub.save(tmp_path / "run")
    sub.save(tmp_path / "named.safetensors")
    for where in (tmp_path / "run", tmp_path / "named.safetensors", tmp_path / "named.json"):
        back = Subspace.load(where)
        assert torch.equal(back.basis, sub.basis) and back.basis.dtype == torch.float32
        assert (back.layers, back.raw_norms, back.positions) == (sub.layers, sub.raw_norms, "all")
        assert (back.n_prompts, back.method, back.model_name) == (9, "diff_in_means", "m")
        assert back.metadata["note"] is None and back.metadata["input_layers"] == [5, 6, 7]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "subspace.json",
        "subspace.safetensors",
    ]


def test_subspace_load_refuses_nan_wrong_shapes_and_skewed_bases(tmp_path):
    Subspace.from_vectors(torch.randn(2, 32), [6, 7]).save(tmp_path)
    tensor_file, json_file = tmp_path / "subspace.safetensors", tmp_path / "subspace.json"
    meta = json.loads(json_file.read_text())
    json_file.write_text(json.dumps({**meta, "k": 3}))
    with pytest.raises(UnlearnInterpError, match=r"subspace.json: .*says k 3 but the basis has"):
        Subspace.load(tmp_path)
    json_file.write_text(json.dumps({**meta, "layers": [6]}))
    with pytest.raises(UnlearnInterpError, match="dimension 2 needs 2 layers and 2 raw norms"):
        Subspace.load(tmp_path)
    json_file.write_text(json.dumps(meta))
    save_file({"basis": torch.full((2, 32), math.nan)}, str(tensor_file))
    with pytest.raises(UnlearnInterpError, match="NaN"):
        Subspace.load(tmp_path)
    save_file({"basis": torch.ones(32)}, str(tensor_file))
    with pytest.raises(UnlearnInterpError, match=r"expected \[k, d_model\]"):
        Subspace.load(tmp_path)
    save_file({"basis": torch.ones(2, 32) / 32**0.5}, str(tensor_file))
    with pytest.raises(UnlearnInterpError, match="subspace.json: basis rows are not orthonormal"):
        Subspace.load(tmp_path)
    with pytest.raises(UnlearnInterpError, match="does not exist"):
        Subspace.load(tmp_path / "elsewhere")


def test_random_subspace_is_orthonormal_reproducible_and_uniform(planted):
    r = directions.random_subspace(32, 3, seed=0)
    assert r.shape == (3, 32) and r.dtype == torch.float32
    assert (r.double() @ r.double().T - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-6
    assert torch.equal(r, directions.random_subspace(32, 3, seed=0))
    assert not torch.allclose(r, directions.random_subspace(32, 3, seed=1))
    # Haar: a fixed unit vector keeps on average k/d of its squared length in the span.
    kept = [float((directions.random_subspace(32, 3, s) @ planted).norm() ** 2) for s in range(300)]
    assert sum(kept) / len(kept) == pytest.approx(3 / 32, abs=0.015)
    junk = Subspace.from_vectors(torch.randn(4, 32), range(4)).basis
    o = directions.random_subspace(32, 4, seed=0, orthogonal_to=junk)
    assert (o @ junk.T).abs().max() < 1e-6
    assert (o.double() @ o.double().T - torch.eye(4, dtype=torch.float64)).abs().max() < 1e-6
    with pytest.raises(UnlearnInterpError, match="cannot fit 29 directions orthogonal to 4"):
        directions.random_subspace(32, 29, seed=0, orthogonal_to=junk)
    with pytest.raises(UnlearnInterpError, match="k must be a positive integer, got 0"):
        directions.random_subspace(32, 0, seed=0)


def test_random_subspace_control_matches_dimension_layers_and_norms():
    junk = Subspace.from_vectors(torch.randn(2, 32) * 7, [6, 7], model_name="m")
    control = directions.random_subspace_control(junk, seed=3)
    assert (control.k, control.layers, control.raw_norms) == (2, junk.layers, junk.raw_norms)
    assert control.method == "random" and control.metadata["seed"] == 3
    assert (control.basis @ junk.basis.T).abs().max() < 1e-6
    assert control.cos_with(junk.basis).max() < 1e-6


def test_subspace_layers_are_the_updated_blocks_outputs():
    from unlearn_interp import rmu

    assert directions.subspace_layers(rmu.RMUConfig(layer=7)) == [5, 6, 7]
    assert directions.subspace_layers(rmu.RMUConfig(layer=7).to_dict()) == [5, 6, 7]
    assert directions.subspace_layers(rmu.RMUConfig(layer=3, update_layers=[1, 3])) == [1, 3]
    with pytest.raises(UnlearnInterpError, match="names no update_layers"):
        directions.subspace_layers({"layer": 7})


def test_a_subspace_is_checked_when_built():
    with pytest.raises(UnlearnInterpError, match="not orthonormal"):
        Subspace(torch.ones(2, 8), layers=[1, 2], raw_norms=[1.0, 1.0])
    with pytest.raises(UnlearnInterpError, match="dimension 2 needs 2 layers"):
        Subspace(torch.eye(8)[:2], layers=[1], raw_norms=[1.0, 1.0])
    with pytest.raises(UnlearnInterpError, match="raw_norms"):
        Subspace(torch.eye(8)[:1], layers=[1], raw_norms=[math.inf])
    with pytest.raises(UnlearnInterpError, match="one layer per row"):
        Subspace.from_vectors(torch.randn(3, 8), layers=[1, 2])

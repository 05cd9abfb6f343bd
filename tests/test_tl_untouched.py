"""TransformerLens is left as it is: importing the toolkit changes nothing about a HookedTransformer
anyone else builds, and the models the toolkit builds (with its own components) behave like
TransformerLens' own in everything a user does with their parameters.

Each row of :data:`ROWS` is one such thing (saving the state dict with safetensors, ``view(-1)``
of a weight and of a gradient, ``parameters_to_vector``, seeded ``init_weights``, an in-place
edit through ``.data``, a copy that must not alias the weight, ``refactor_factored_attn_matrices``
and the hooks after it, attention called with positional masks); its outcome is a hash of what
came out, or the exception's type.

* Two fresh processes (this file run as a script) build the same seeded models from a
  ``HookedTransformerConfig`` (gated MLP, RMSNorm, rotary, grouped-query; and multi-head with
  learned positions, which TransformerLens can refactor): one after importing every
  ``unlearn_interp`` module (and building a toolkit model), one importing none. Every row must
  come out the same, and no attribute of any TransformerLens class may differ from what it was
  before the toolkit was imported.
* In this process, a model from ``models.load_model`` of a tiny checkpoint (llama, gpt2) against
  a plain ``HookedTransformer`` of the same config holding the same state dict: every row the
  same (the initialisation row compares the two under the same seed).

    python -m pytest tests/test_tl_untouched.py -q
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

Make = Callable[[], HookedTransformer]
TOKENS = torch.arange(16).reshape(2, 8) * 3 % 50  # 16 rows through every linear layer


def config(kind: str) -> HookedTransformerConfig:
    """A 2-layer seeded config: ``rotary-gqa`` (gated MLP, RMSNorm, rotary, 4 heads over 2 K/V
    heads) or ``learned-mha`` (the same with learned positions and multi-head attention)."""
    rotary = kind == "rotary-gqa"
    return HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=32,
        act_fn="silu", normalization_type="RMS", gated_mlp=True, seed=0, device="cpu",
        positional_embedding_type="rotary" if rotary else "standard",
        rotary_dim=8 if rotary else None, n_key_value_heads=2 if rotary else None,
    )  # fmt: skip


def digest(*tensors: torch.Tensor) -> str:
    """A short hash of the tensors' shapes, dtypes and values."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def weights(model: HookedTransformer) -> str:
    return digest(*model.parameters())


def row_save_file(make: Make) -> Any:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(make().state_dict(), str(path))
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def row_view_w_in(make: Make) -> Any:
    return digest(make().blocks[0].mlp.W_in.view(-1))


def row_view_w_q(make: Make) -> Any:
    return digest(make().blocks[0].attn.W_Q.view(-1))


def row_view_grad(make: Make) -> Any:
    model = make()
    model(TOKENS, return_type="loss").backward()
    return digest(model.blocks[0].mlp.W_in.grad.view(-1), model.blocks[1].attn.W_O.grad.view(-1))


def row_parameters_to_vector(make: Make) -> Any:
    return digest(torch.nn.utils.parameters_to_vector(make().parameters()))


def row_seeded_init(make: Make) -> Any:
    model = make()
    torch.manual_seed(0)
    model.init_weights()
    return weights(model)


def row_edit_through_data(make: Make) -> Any:
    model = make()
    model.blocks[0].mlp.W_in.data.reshape(-1)[0] = 5
    return float(model.blocks[0].mlp.W_in[0, 0].detach())


def row_copy_does_not_alias(make: Make) -> Any:
    model = make()
    before = weights(model)
    model.blocks[0].mlp.W_in.detach().T.contiguous().zero_()
    return [weights(model) == before, weights(model)]


def row_refactor(make: Make) -> Any:
    model = make()
    model.load_and_process_state_dict(
        model.state_dict(), fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=True,
    )  # fmt: skip
    with torch.no_grad():
        _, cache = model.run_with_cache(TOKENS)
    per_layer = [(b.attn.W_V, b.attn.W_O) for b in model.blocks]
    hooks = [cache[f"blocks.{i}.attn.{h}"] for i in range(2) for h in ("hook_v", "hook_z")]
    return [digest(*pair) for pair in per_layer] + [digest(*hooks)]


def row_positional_masks(make: Make) -> Any:
    model = make()
    x = torch.randn(2, 8, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return digest(model.blocks[0].attn(x, x, x, None, None))


ROWS: dict[str, Callable[[Make], Any]] = {
    "save_file(state_dict)": row_save_file,
    "W_in.view(-1)": row_view_w_in,
    "attn.W_Q.view(-1)": row_view_w_q,
    "grad.view(-1) after backward": row_view_grad,
    "parameters_to_vector": row_parameters_to_vector,
    "manual_seed + init_weights": row_seeded_init,
    "W_in.data.reshape(-1)[0] = 5": row_edit_through_data,
    "W_in.detach().T.contiguous().zero_()": row_copy_does_not_alias,
    "refactor_factored_attn_matrices": row_refactor,
    "attn(x, x, x, None, None)": row_positional_masks,
}


def outcomes(make: Make) -> dict[str, dict]:
    """Each row's outcome on fresh models from ``make``: its value, or the exception's type."""
    found = {}
    for name, row in ROWS.items():
        try:
            found[name] = {"ok": True, "value": row(make)}
        except Exception as err:  # noqa: BLE001 - the exception's type is the outcome
            found[name] = {"ok": False, "error": type(err).__name__}
    return found


def seeded_model(kind: str) -> Make:
    def make() -> HookedTransformer:
        torch.manual_seed(0)
        return HookedTransformer(config(kind))

    return make


def class_attributes() -> dict[str, int]:
    """``module.Class.attribute`` -> id of its value, for every class TransformerLens defines in
    the modules imported so far."""
    found = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("transformer_lens") or module is None:
            continue
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == module_name:
                for attr, value in vars(cls).items():
                    found[f"{module_name}.{cls.__qualname__}.{attr}"] = id(value)
    return found


def import_every_module() -> list[str]:
    """Import every ``unlearn_interp`` module; the ones that failed, with their error."""
    import importlib
    import pkgutil

    import unlearn_interp

    failed = []
    for info in pkgutil.walk_packages(unlearn_interp.__path__, "unlearn_interp."):
        try:
            importlib.import_module(info.name)
        except Exception as err:  # noqa: BLE001 - reported by the test
            failed.append(f"{info.name}: {type(err).__name__}: {err}")
    return failed


def main(mode: str) -> None:
    """One fresh process's report (``all``: import the whole toolkit first; ``none``: no toolkit)."""
    torch.set_num_threads(1)
    before = class_attributes()
    report: dict[str, Any] = {"import_failures": []}
    if mode == "all":
        report["import_failures"] = import_every_module()
        from unlearn_interp import models

        models.random_model(n_layers=1, d_model=16, n_heads=2, d_vocab=20, n_ctx=16)
    rows = {f"{kind}: {name}": outcome
            for kind in ("rotary-gqa", "learned-mha")
            for name, outcome in outcomes(seeded_model(kind)).items()}  # fmt: skip
    after = class_attributes()
    report["rows"] = rows
    report["changed_class_attributes"] = sorted(k for k in before if after.get(k) != before[k])
    report["toolkit_imported"] = any(m.startswith("unlearn_interp") for m in sys.modules)
    sys.stdout.write("\n" + json.dumps(report) + "\n")


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_importing_the_toolkit_changes_no_transformer_lens_model():
    script = str(Path(__file__).resolve())
    runs = {
        mode: subprocess.Popen(
            [sys.executable, script, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        for mode in ("all", "none")
    }
    reports = {}
    for mode, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        reports[mode] = json.loads(out.strip().splitlines()[-1])
    full, bare = reports["all"], reports["none"]
    assert full["import_failures"] == []
    assert full["toolkit_imported"] and not bare["toolkit_imported"]
    assert full["changed_class_attributes"] == [] == bare["changed_class_attributes"]
    assert list(full["rows"]) == list(bare["rows"])
    for name, outcome in bare["rows"].items():
        assert full["rows"][name] == outcome, name
    # the rows test something: on TransformerLens' own model they do what a user expects
    rows = bare["rows"]
    assert all(rows[f"learned-mha: {name}"]["ok"] for name in ROWS)
    assert rows["rotary-gqa: W_in.data.reshape(-1)[0] = 5"]["value"] == 5.0
    assert rows["rotary-gqa: W_in.detach().T.contiguous().zero_()"]["value"][0] is True


def test_toolkit_models_behave_like_transformer_lens_models(tmp_path, tokenizer):
    from conftest import save_hf_checkpoint

    from unlearn_interp import backend_components, models

    for family in ("llama", "gpt2"):
        path = save_hf_checkpoint(family, tmp_path / family, tokenizer, seed=2)
        loaded = models.load_model(path, device="cpu")

        def ours(loaded=loaded) -> HookedTransformer:
            return copy.deepcopy(loaded)

        def theirs(loaded=loaded) -> HookedTransformer:
            plain = HookedTransformer(loaded.cfg)
            plain.load_state_dict(loaded.state_dict())
            return plain

        assert backend_components.uses_toolkit_components(ours())
        assert not backend_components.uses_toolkit_components(theirs())
        mine, expected = outcomes(ours), outcomes(theirs)
        for name, outcome in expected.items():
            assert mine[name] == outcome, (family, name)
        # TransformerLens' own model does what a user expects (llama: rotary, no refactoring)
        assert all(o["ok"] for n, o in expected.items() if n != "refactor_factored_attn_matrices")
        assert expected["W_in.data.reshape(-1)[0] = 5"]["value"] == 5.0
        assert expected["W_in.detach().T.contiguous().zero_()"]["value"][0] is True
    assert expected["refactor_factored_attn_matrices"]["ok"]  # gpt2: refactored


if __name__ == "__main__":
    main(sys.argv[1])

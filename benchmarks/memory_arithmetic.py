"""Memory arithmetic for 7B and 70B models: what each of the toolkit's steps holds, from a config.

Usage:
    python benchmarks/memory_arithmetic.py            # print the table (bfloat16, batch 4 x 512)
    python benchmarks/memory_arithmetic.py --readme   # also rewrite README.md's table in place

Every number is computed from the architecture (no model is built); ``tests/
test_memory_arithmetic.py`` checks the formulas against tiny TransformerLens models of the same
family: the parameter count against ``sum(p.numel())``, the tensors autograd saves for backward
(RMU's suffix, fine-tuning) against the tensors ``saved_tensors_hooks`` sees, the AdamW moments
against ``optimizer.state``, the KV cache against ``activations.new_kv_cache``. Those byte counts
are TransformerLens 3.9's (the version ``backend_components`` is pinned to); they are exact, not
estimates. Two quantities are estimates and say so: the transient peak of a no-grad block (the
largest tensors one block has alive at once) and the logits of a training loss (the float32 copy,
its log-softmax and their gradients). Loading's host overhead is the measured
``benchmarks/results/loading_cpu.json`` (7-17% over the parameters).

    >>> import memory_arithmetic as ma                                  # doctest: +SKIP
    >>> ma.parameter_count(ma.MISTRAL_7B)
    7241732096
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

GB = 1e9  # decimal gigabytes, as cards are sold (an "80 GB" card holds 80e9 bytes)
FLOAT32 = 4
README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = ("<!-- memory-table:start -->", "<!-- memory-table:end -->")


@dataclasses.dataclass(frozen=True)
class Arch:
    """A Llama/Mistral-family decoder (RMSNorm, rotary, gated SiLU MLP, grouped-query attention,
    untied unembedding) as HuggingFace configures it."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    d_vocab: int
    n_ctx: int = 2048  # hf_convert.MAX_CTX: the rotary tables TransformerLens keeps per block

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


MISTRAL_7B = Arch("Mistral-7B / Zephyr-7B", 4096, 32, 32, 8, 14336, 32000)
LLAMA3_70B = Arch("Llama-3-70B", 8192, 80, 64, 8, 28672, 128256)


# --- parameters ---------------------------------------------------------------------------------


def block_parameter_count(a: Arch) -> int:
    """One decoder block: Q and O (d_model x heads*d_head), K and V (d_model x kv*d_head), gate,
    up and down (d_model x d_mlp), two RMSNorm weights."""
    q_o = 2 * a.d_model * a.n_heads * a.d_head
    k_v = 2 * a.d_model * a.n_kv_heads * a.d_head
    return q_o + k_v + 3 * a.d_model * a.d_mlp + 2 * a.d_model


def parameter_count(a: Arch, n_blocks: int | None = None, unembed: bool = True) -> int:
    """HuggingFace's count: embedding, ``n_blocks`` blocks (default all), final norm and
    unembedding (``unembed=False``: the first blocks only, as RMU on blocks 0..l loads them)."""
    blocks = a.n_layers if n_blocks is None else n_blocks
    head = a.d_model + a.d_vocab * a.d_model if unembed else 0
    return a.d_vocab * a.d_model + blocks * block_parameter_count(a) + head


def backend_parameter_count(a: Arch) -> int:
    """TransformerLens's count: HuggingFace's plus the zero biases it keeps (b_Q, b_K, b_V, b_O,
    b_in, b_out per block, b_U)."""
    biases = a.n_heads * a.d_head + 2 * a.n_kv_heads * a.d_head + 2 * a.d_model + a.d_mlp
    return parameter_count(a) + a.n_layers * biases + a.d_vocab


def buffer_bytes(a: Arch, dtype_bytes: int) -> int:
    """Rotary sine and cosine tables, ``n_ctx x d_head`` in the model dtype, in every block."""
    return a.n_layers * 2 * a.n_ctx * a.d_head * dtype_bytes


def weight_bytes(a: Arch, dtype_bytes: int) -> int:
    """The loaded model: TransformerLens parameters and buffers."""
    return backend_parameter_count(a) * dtype_bytes + buffer_bytes(a, dtype_bytes)


def update_matrices(a: Arch, n: int = 3) -> int:
    """Elements of ``n`` MLP output matrices (d_mlp x d_model): what RMU trains."""
    return n * a.d_mlp * a.d_model


def adamw_state_bytes(n_params: int, dtype_bytes: int) -> int:
    """torch's AdamW: two moments shaped and typed like the parameters (``rmu/train.py`` and
    ``attacks/finetune.py`` train in the parameters' own dtype)."""
    return 2 * n_params * dtype_bytes


def snapshot_bytes(n_params: int, dtype_bytes: int) -> int:
    """The one copy a run keeps of what it trains: RMU's ``SplitForward.base``, fine-tuning's
    ``variants.restored_weights`` (``training.trainable`` restores from it after an error)."""
    return n_params * dtype_bytes


def training_extra_bytes(n_params: int, dtype_bytes: int) -> int:
    """What training ``n_params`` parameters adds to the model: gradients, AdamW's two moments
    and the snapshot."""
    gradients = n_params * dtype_bytes
    return (
        gradients + adamw_state_bytes(n_params, dtype_bytes) + snapshot_bytes(n_params, dtype_bytes)
    )


# --- activations --------------------------------------------------------------------------------


def norm_bytes_per_token(a: Arch, dtype_bytes: int) -> int:
    """RMSNorm computes in float32: it saves the float32 input (twice below float32: the cast and
    the normalised value) and one float32 scale per token."""
    copies = 1 if dtype_bytes == FLOAT32 else 2
    return copies * a.d_model * FLOAT32 + 2 * FLOAT32


def block_saved_bytes_per_token(a: Arch, seq: int, dtype_bytes: int) -> int:
    """What one block saves for backward per token when its input needs a gradient (weights
    frozen): four d_mlp-wide tensors (gate, its SiLU, up, their product), queries and the keys
    and values repeated to every head, four rotary tables, two RMSNorms, the attention pattern
    twice (seq per head), and boolean masks (one per head and one per row)."""
    mlp = 4 * a.d_mlp * dtype_bytes
    attn = 3 * a.n_heads * a.d_head * dtype_bytes + 4 * a.d_head * dtype_bytes
    pattern = 2 * a.n_heads * seq * dtype_bytes + a.n_heads * seq + seq
    return mlp + attn + 2 * norm_bytes_per_token(a, dtype_bytes) + pattern


def attention_weight_copy_bytes(a: Arch, dtype_bytes: int) -> int:
    """TransformerLens' attention copies ``W_Q``, ``W_K``, ``W_V`` (to ``[(head d_head),
    d_model]``) and ``W_O`` on every call (``backend_components`` keeps these copies: they cannot
    be avoided bit for bit); a block whose input needs a gradient keeps all four for backward."""
    return (2 * a.n_heads + 2 * a.n_kv_heads) * a.d_head * a.d_model * dtype_bytes


def rmu_saved_bytes(
    a: Arch, batch: int, seq: int, first: int, layer: int, dtype_bytes: int, masked: bool = True
) -> int:
    """RMU's suffix (``rmu.forward.SplitForward``, only the W_out of blocks first..layer train):
    block ``first`` saves only its W_out input (d_mlp per token), blocks first+1..layer save
    everything (and their attention weight copies); the loss (``rmu.loss.masked_mse``) saves h after ``layer`` in float32 and the
    float32 mask (``masked=False``, the reference's loss: the float32 target instead). One of the
    two graphs (forget, retain) is alive at a time."""
    per_token = a.d_mlp * dtype_bytes + (layer - first) * block_saved_bytes_per_token(
        a, seq, dtype_bytes
    )
    copies = (layer - first) * attention_weight_copy_bytes(a, dtype_bytes)
    if masked:
        return batch * seq * (per_token + a.d_model * FLOAT32 + FLOAT32) + FLOAT32 + copies
    return batch * seq * (per_token + a.d_model * FLOAT32) + a.d_model * FLOAT32 + copies


def finetune_saved_bytes(a: Arch, batch: int, seq: int, dtype_bytes: int, params: str) -> int:
    """``attacks.finetune`` (``params`` "all" or "mlp_out") through ``training.next_token_loss``: every
    block saves what it needs for the input gradient (block 0 only its W_out input under
    "mlp_out"), and the attention weight copies of those blocks; "all" adds nine d_model-wide
    inputs of weight gradients per block, two for the final norm and unembedding and the token
    ids; the final norm; the loss's float32 log-softmax of the batch x (seq - 1) targets and its
    per-target statistics."""
    full = block_saved_bytes_per_token(a, seq, dtype_bytes)
    final_norm = a.d_model * FLOAT32 + FLOAT32
    if params == "all":
        per_token = a.n_layers * (full + 9 * a.d_model * dtype_bytes)
        per_token += 2 * a.d_model * dtype_bytes + 8  # final norm / unembed inputs; int64 ids
        blocks_with_input_gradient = a.n_layers
    else:
        per_token = a.d_mlp * dtype_bytes + (a.n_layers - 1) * full
        blocks_with_input_gradient = a.n_layers - 1
    targets = batch * (seq - 1)
    loss = targets * (a.d_vocab * FLOAT32 + FLOAT32 + 8) + 2 * FLOAT32
    copies = blocks_with_input_gradient * attention_weight_copy_bytes(a, dtype_bytes)
    return batch * seq * (per_token + final_norm) + loss + copies


def kv_cache_bytes(a: Arch, batch: int, positions: int, dtype_bytes: int) -> int:
    """Keys and values of every block, ``kv_heads x d_head`` per position (grouped, not
    repeated), as ``activations.new_kv_cache`` allocates them."""
    return 2 * a.n_layers * batch * positions * a.n_kv_heads * a.d_head * dtype_bytes


def no_grad_block_peak_bytes(a: Arch, batch: int, seq: int, dtype_bytes: int) -> int:
    """Estimate: a no-grad forward's largest live set inside one block -- the residual stream
    in and out, the float32 norm, then the larger of attention (queries, repeated keys and
    values, scores and pattern, mask) and the MLP (gate, SiLU, up, product)."""
    tokens = batch * seq
    resid = tokens * (2 * a.d_model * dtype_bytes + a.d_model * FLOAT32)
    qkv = 3 * tokens * a.n_heads * a.d_head * dtype_bytes
    attn = qkv + batch * a.n_heads * seq * seq * (2 * dtype_bytes + 1)
    mlp = 4 * tokens * a.d_mlp * dtype_bytes
    return resid + max(attn, mlp)


def logits_bytes(batch: int, positions: int, d_vocab: int, dtype_bytes: int) -> int:
    """Scoring's logits: the model-dtype unembedding output at ``positions`` per row, its float32
    copy and float32 log-softmax (``activations.last_logprobs``)."""
    return batch * positions * d_vocab * (dtype_bytes + 2 * FLOAT32)


def loss_logits_peak_bytes(a: Arch, batch: int, seq: int, dtype_bytes: int) -> int:
    """Estimate: a next-token loss's logits -- the model-dtype logits, the float32 copy, the
    log-softmax, and in backward their float32 gradient."""
    return batch * seq * a.d_vocab * (dtype_bytes + 3 * FLOAT32)


# --- the toolkit's steps ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """Batch, sequence length, dtype and RMU layers the table is computed at."""

    batch: int = 4
    seq: int = 512
    dtype_bytes: int = 2  # bfloat16
    layer: int = 7  # RMU's steered layer
    first: int = 5  # first updated block (update layers 5, 6, 7)
    new_tokens: int = 512  # generation: new tokens after a seq-token prompt


def loading_overhead(results: Path | None = None) -> float:
    """The worst measured host overhead of the streaming loader over the parameters' bytes
    (``extra_over_params_max`` of its "streamed" rows in ``results/loading_cpu.json``)."""
    path = results or Path(__file__).parent / "results" / "loading_cpu.json"
    rows = json.loads(path.read_text())["results"].values()
    return max(row["streamed"]["extra_over_params_max"] for row in rows)


def rmu_bytes(a: Arch, s: Setting, n_blocks: int | None = None) -> int:
    """RMU with ``n_blocks`` blocks loaded (default all, with the unembedding)."""
    if n_blocks is None:
        weights = weight_bytes(a, s.dtype_bytes)
    else:
        weights = parameter_count(a, n_blocks, unembed=False) * s.dtype_bytes
    resid = 4 * s.batch * s.seq * a.d_model * s.dtype_bytes  # prefixes, frozen and kept outputs
    return (
        weights
        + training_extra_bytes(update_matrices(a), s.dtype_bytes)
        + rmu_saved_bytes(a, s.batch, s.seq, s.first, s.layer, s.dtype_bytes)
        + no_grad_block_peak_bytes(a, s.batch, s.seq, s.dtype_bytes)
        + resid
    )


def finetune_bytes(a: Arch, s: Setting, params: str) -> int:
    """``attacks.finetune`` at ``params`` ("all": every parameter; "mlp_out": every W_out)."""
    trained = backend_parameter_count(a) if params == "all" else update_matrices(a, a.n_layers)
    return (
        weight_bytes(a, s.dtype_bytes)
        + training_extra_bytes(trained, s.dtype_bytes)
        + finetune_saved_bytes(a, s.batch, s.seq, s.dtype_bytes, params)
        + loss_logits_peak_bytes(a, s.batch, s.seq, s.dtype_bytes)
    )


def step_bytes(a: Arch, s: Setting) -> dict[str, int]:
    """Device bytes of each step, by the step's name."""
    e, b, t = s.dtype_bytes, s.batch, s.seq
    w = weight_bytes(a, e)
    no_grad = no_grad_block_peak_bytes(a, b, t, e)
    return {
        "weights, float32": weight_bytes(a, FLOAT32),
        "weights (load_model: the same on the device)": w,
        "RMU, whole model": rmu_bytes(a, s),
        f"RMU, first {s.layer + 1} blocks only": rmu_bytes(a, s, s.layer + 1),
        "letter scoring": w + no_grad + logits_bytes(b, 1, a.d_vocab, e),
        f"generation ({t} + {s.new_tokens} tokens)": w
        + kv_cache_bytes(a, b, t + s.new_tokens, e)
        + no_grad
        + logits_bytes(b, 1, a.d_vocab, e),
        "direction extraction": w + no_grad,
        "fine-tuning attack, mlp_out": finetune_bytes(a, s, "mlp_out"),
        "fine-tuning attack, all parameters": finetune_bytes(a, s, "all"),
        "audit of a pair whose every MLP changed, without the ledger": w
        + changed_mlp_bytes(a, e)
        + no_grad
        + logits_bytes(b, 1, a.d_vocab, e),
        "audit of that pair, the ledger's fine-tuning (all parameters)": finetune_bytes(a, s, "all")
        + changed_mlp_bytes(a, e),
    }


def changed_mlp_bytes(a: Arch, dtype_bytes: int) -> int:
    """The unlearned tensors an audit holds beside the base model when every block's MLP matrices
    changed (gradient difference, NPO, fine-tuning of the MLPs): 3 x d_model x d_mlp a block."""
    return update_matrices(a, 3 * a.n_layers) * dtype_bytes


def components(a: Arch, s: Setting) -> dict[str, int]:
    """The parts the steps are made of, for the JSON and the README's prose."""
    e, b, t = s.dtype_bytes, s.batch, s.seq
    return {
        "parameters": parameter_count(a),
        "adamw_state_3_w_out": adamw_state_bytes(update_matrices(a), e),
        "rmu_saved_activations": rmu_saved_bytes(a, b, t, s.first, s.layer, e),
        "no_grad_block_peak": no_grad_block_peak_bytes(a, b, t, e),
        "kv_cache": kv_cache_bytes(a, b, t + s.new_tokens, e),
        "scoring_logits": logits_bytes(b, 1, a.d_vocab, e),
        "full_logits_loss": loss_logits_peak_bytes(a, b, t, e),
    }


def markdown_table(archs: tuple[Arch, ...], s: Setting) -> str:
    """The README's table: one row per step, one column per model, decimal GB."""
    cols = [step_bytes(a, s) for a in archs]
    head = "| step (bfloat16, batch 4 x 512) | " + " | ".join(a.name for a in archs) + " |"
    lines = [head, "|---|" + "---:|" * len(archs)]
    for step in cols[0]:
        lines.append(f"| {step} | " + " | ".join(f"{c[step] / GB:,.1f}" for c in cols) + " |")
    return "\n".join(lines)


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the table markers replaced by ``table``."""
    start, end = (re.escape(m) for m in MARKERS)
    pattern = re.compile(f"{start}.*?{end}", re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"README.md has no {MARKERS[0]} ... {MARKERS[1]} block")
    return pattern.sub(lambda _: f"{MARKERS[0]}\n{table}\n{MARKERS[1]}", readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's table")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "memory_arithmetic.json"
    )
    args = parser.parse_args()
    archs, s = (MISTRAL_7B, LLAMA3_70B), Setting()
    table = markdown_table(archs, s)
    print(table)
    print(f"loading onto the CPU: host peak up to {1 + loading_overhead():.2f}x the weights")
    record = {
        a.name: {
            "arch": dataclasses.asdict(a),
            "steps": step_bytes(a, s),
            "components": components(a, s),
        }
        for a in archs
    }
    record["setting"] = dataclasses.asdict(s)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    if args.readme:
        README.write_text(with_table(README.read_text(), table))


if __name__ == "__main__":
    main()

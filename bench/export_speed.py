"""Streaming export vs a plain `cp -r` of the same checkpoint, and the export's peak memory, one run side by side.

    python bench/export_speed.py                       # synthetic 0.5 GB and 2 GB bf16 checkpoints + SmolLM2
    python bench/export_speed.py --sizes 0.5 --rounds 1

The synthetic checkpoints are Llama-shaped with a few wide layers (hidden 4096, 32 heads, 8 KV heads, MLP 14336), random
bf16 weights written shard by shard (1 GB shards) by this script. Each export runs `stream_export` (what
`headpatch export SRC --patch P` calls; no model load) in a fresh process, patching two heads in every layer. "export s" is the export call itself (fsync of
every output file included; plain cp does not fsync, so "cp+sync" also times `sync` of the copied files), the second
in its process; "first export s" is the first one, which also pays one-off lazy imports; "process s" is the whole
process (interpreter start, imports, two exports). Peak resident memory is that process's own VmHWM.
The page cache is warmed first and cp/export alternate, so neither gets a colder disk than the other.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headpatch.architectures import head_layout  # noqa: E402
from headpatch.io.files import write_record  # noqa: E402
from headpatch.record import Architecture, Location, PatchRecord, Pear  # noqa: E402

WIDE = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336)
SHARD_BYTES = 1 << 30
# Peak RSS is VmHWM of the process's own address space: getrusage's ru_maxrss would also count the parent's peak,
# which Linux carries over through fork/vfork + exec.
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
# The first export in a process also pays one-off lazy imports (config classes, model card templates); it is timed
# separately, then deleted, and the second one is the "export" figure.
RUNNER = rf"""
import shutil, sys, time
from headpatch.io.export import stream_export
from headpatch.io.files import read_record
record = read_record(sys.argv[2])
start = time.perf_counter()
stream_export(sys.argv[1], record, sys.argv[3] + "-first", show_progress=False)
first = time.perf_counter() - start
shutil.rmtree(sys.argv[3] + "-first")
start = time.perf_counter()
stream_export(sys.argv[1], record, sys.argv[3], show_progress=False)
print(first, time.perf_counter() - start, {PEAK})
"""
IMPORTS_ONLY = rf"""
import headpatch.io.export, headpatch.record, transformers
print({PEAK})
"""


def layer_tensors(layer: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of one Llama decoder layer (layer -1: embeddings, final norm and head)."""
    h, kv, m = WIDE["hidden_size"], WIDE["num_key_value_heads"] * 128, WIDE["intermediate_size"]
    if layer < 0:
        return {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    p = f"model.layers.{layer}."
    return {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (m, h), p + "mlp.up_proj.weight": (m, h), p + "mlp.down_proj.weight": (h, m)}


def build_checkpoint(directory: Path, layers: int, vocab: int) -> None:
    """A sharded bf16 Llama checkpoint with random weights, written one shard at a time."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=layers, vocab_size=vocab, dtype="bfloat16", **WIDE).save_pretrained(directory)
    names = {}
    for layer in [-1, *range(layers)]:
        names.update(layer_tensors(layer, vocab))
    shards, current, size = [], {}, 0
    for name, shape in names.items():
        nbytes = 2 * torch.Size(shape).numel()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name], size = shape, size + nbytes
    shards.append(current)
    weight_map, generator = {}, torch.Generator().manual_seed(0)
    for index, shard in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for n, s in shard.items()}
        save_file(tensors, directory / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in shard})
    total = sum((directory / f).stat().st_size for f in set(weight_map.values()))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def patch_every_layer(directory: Path, work: Path) -> Path:
    """A patch record scaling heads 0 and 5 of every layer of the checkpoint."""
    from transformers import AutoConfig

    layout = head_layout(AutoConfig.from_pretrained(directory))
    coefficients = {f"{layer}-{head}": 0.8 for layer in range(layout.num_layers) for head in (0, 5)}
    pear = Pear(heads=tuple(coefficients), location=Location(method="given by the user", k=len(coefficients)),
                coefficients=coefficients)
    record = PatchRecord(headpatch_version="bench", source=str(directory), base_model=str(directory),
                         architecture=Architecture.of(layout), pear=pear)
    return write_record(record, work / f"{directory.name}-patch.json")


def dir_bytes(directory: Path) -> int:
    """Total size of the files under a directory."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def compare(source: Path, work: Path, rounds: int) -> dict[str, float]:
    """Median seconds of cp -r and of the export, alternating, plus the export's peak RSS."""
    patch = patch_every_layer(source, work)
    subprocess.run(["cat", *map(str, source.rglob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)
    copies, synced, firsts, exports, processes, peaks = [], [], [], [], [], []
    for _ in range(rounds):
        target = work / "copy"
        start = time.perf_counter()
        subprocess.run(["cp", "-r", str(source), str(target)], check=True)
        copies.append(time.perf_counter() - start)
        subprocess.run(["sync", *map(str, target.rglob("*"))], check=True)
        synced.append(time.perf_counter() - start)
        shutil.rmtree(target)
        out = work / "export"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", RUNNER, str(source), str(patch), str(out)],
                              capture_output=True, text=True, check=True)
        processes.append(time.perf_counter() - start)
        first_seconds, seconds, peak = map(float, done.stdout.split())
        firsts.append(first_seconds)
        exports.append(seconds)
        peaks.append(peak)
        shutil.rmtree(out)
    return {"bytes": dir_bytes(source), "cp_s": statistics.median(copies), "cp_sync_s": statistics.median(synced), "export_s": statistics.median(exports),
            "first_export_s": statistics.median(firsts),
            "process_s": statistics.median(processes),
            "export_peak_rss_mib": max(peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5,2", help="synthetic checkpoint sizes in GB (layers are added to fit)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-smollm2", action="store_true")
    args = parser.parse_args()
    imports = subprocess.run([sys.executable, "-c", IMPORTS_ONLY], capture_output=True, text=True, check=True)
    print(f"peak RSS of a process that only imports headpatch + transformers: {float(imports.stdout):.0f} MiB")
    rows = []
    with tempfile.TemporaryDirectory(prefix="headpatch-bench-", dir=Path.cwd()) as tmp:
        work = Path(tmp)
        for size in (float(s) for s in args.sizes.split(",")):
            layers = max(1, round((size * 1e9 - 0.26e9) / 0.436e9))
            source = work / f"wide-{layers}L"
            build_checkpoint(source, layers, vocab=32000 if layers > 1 else 8000)
            rows.append((f"synthetic {layers} layers", compare(source, work, args.rounds)))
            shutil.rmtree(source)
        if not args.no_smollm2:
            from headpatch.loading import resolve_source

            smollm2 = Path(resolve_source("smollm2-135m").location)
            rows.append(("SmolLM2-135M fp32", compare(smollm2, work, args.rounds)))
    print(f"{'checkpoint':<20} {'GB':>5} {'cp -r s':>8} {'cp+sync s':>10} {'export s':>9} {'/cp':>5} {'/cp+sync':>9} "
          f"{'first export s':>15} {'process s':>10} {'peak RSS MiB':>13}")
    for name, row in rows:
        print(f"{name:<20} {row['bytes'] / 1e9:>5.2f} {row['cp_s']:>8.2f} {row['cp_sync_s']:>10.2f} "
              f"{row['export_s']:>9.2f} {row['export_s'] / row['cp_s']:>5.2f} {row['export_s'] / row['cp_sync_s']:>9.2f} "
              f"{row['first_export_s']:>15.2f} {row['process_s']:>10.2f} {row['export_peak_rss_mib']:>13.0f}")


if __name__ == "__main__":
    main()

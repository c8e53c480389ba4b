"""General distillation throughput (tokens/s) before and after the packed general corpus, measured in one run.

    python benchmarks/gd_throughput.py                       # the demo recipe's GD stage, 2-core CPU: a few minutes
    python benchmarks/gd_throughput.py --steps 40 --rounds 5 --stages.gd.batch_size 64   # any recipe override

Two arms train the recipe's first general-corpus stage (same teacher, student, batch, block size, seed) for
``--steps`` optimiser steps, alternating ``--rounds`` times so that machine load hits both alike:

- ``before``: the data path and teacher call this package had before (``datasets`` text stream tokenised and
  packed inside the training process, 2048-block shuffle buffer; the teacher asked for every layer's
  attention map, i.e. eager attention in all layers);
- ``after``: the packed corpus (``compressor.data.corpus.general_corpus``: tokenised once in ``num_proc`` processes,
  memory-mapped) and the teacher computing only the mapped layers' maps.

It also times each data path alone (what it can feed, tokens/s), the one-time pack of the whole corpus, and
the share of a training step spent in the teacher, which together say what bounds GD here. Medians are printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, PrinterCallback

from compressor.data.corpus import general_corpus, pack_blocks
from compressor.modeling.losses import Outputs
from compressor.modeling.student import build_student, layer_map, projections_for
from compressor.modeling.trainer import DistillationModule, DistillationTrainer, training_arguments
from compressor.recipe.schema import load_recipe
from compressor.recipe.tasks import GLUE_TASKS

REPO = Path(__file__).resolve().parents[1]


def streamed_blocks(files: list[str], tokenizer, block_size: int, seed: int):
    """The general corpus as the package read it before: a text stream tokenised and packed on the fly."""
    pack = pack_blocks(tokenizer, block_size)
    stream = datasets.load_dataset("text", data_files=files, split="train", streaming=True)
    stream = stream.map(lambda b: pack(b["text"]), batched=True, batch_size=256, remove_columns=["text"])
    return stream.shuffle(seed=seed, buffer_size=2048)


class TimedTrainer(DistillationTrainer):
    """Times the teacher's forward; ``before`` also asks it for every layer's map, as the package did."""

    def __init__(self, *args, all_maps: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.all_maps, self.teacher_seconds = all_maps, 0.0

    def teacher_outputs(self, inputs, wanted, layers=None):
        start = time.perf_counter()
        if self.all_maps:
            with torch.no_grad():
                kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
                out = Outputs.of(self.teacher(**kwargs, output_hidden_states=True, output_attentions=True))
        else:
            out = super().teacher_outputs(inputs, wanted, layers)
        self.teacher_seconds += time.perf_counter() - start
        return out


def train_once(arm: str, data, recipe, stage, teacher, tokenizer, steps: int, out: Path) -> dict[str, float]:
    transformers.set_seed(recipe.seed)
    # a student cut from the teacher (init: pruned) has the recipe's shape, so a random one of that shape
    # does the same arithmetic without the pruning run
    shape = recipe.student.model_copy(update={"init": "random"}) if recipe.student.init == "pruned" else recipe.student
    student = build_student(shape, teacher, GLUE_TASKS[recipe.task.name])
    module = DistillationModule(student, projections_for(student, teacher), stage.losses,
                                layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers))
    args = training_arguments(out / arm, stage, recipe, max_steps=steps, save_strategy="no", report_to=[],
                             logging_steps=10 ** 6, disable_tqdm=True)
    trainer = TimedTrainer(model=module, teacher=teacher, args=args, train_dataset=data, all_maps=arm == "before",
                           data_collator=DataCollatorWithPadding(tokenizer))
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = steps * stage.batch_size * stage.max_seq_length
    return {"tokens_per_s": tokens / seconds, "teacher_share": trainer.teacher_seconds / seconds}


def data_only(data, tokenizer, batch_size: int, batches: int) -> float:
    """Tokens/s the data path alone delivers through the same collator (no model)."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer),
                                         **({"shuffle": True} if isinstance(data, datasets.Dataset) else {}))
    start, tokens = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        tokens += batch["input_ids"].numel()
        if i + 1 == batches:
            break
    return tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "compressor" / "configs" / "demo.yaml"))
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="before/after pairs, alternated")
    args, overrides = p.parse_known_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    recipe = load_recipe(args.config, overrides)
    stage = next(s for s in recipe.stages if s.data == "general")
    if not recipe.general.files:
        sys.exit("error: this benchmark compares local-file paths; give general.files")
    tokenizer = AutoTokenizer.from_pretrained(recipe.teacher.pretrained)
    teacher = AutoModel.from_pretrained(recipe.teacher.pretrained)
    block = stage.max_seq_length

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe.general.cache_dir = str(tmp / "packed")
        start = time.perf_counter()
        packed = general_corpus(recipe.general, tokenizer, block)
        pack_seconds = time.perf_counter() - start
        before_data = streamed_blocks(recipe.general.files, tokenizer, block, recipe.seed)
        feeds = {"before": data_only(before_data, tokenizer, stage.batch_size, 50),
                 "after": data_only(packed, tokenizer, stage.batch_size, 50)}
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for arm in (("before", "after") if r % 2 == 0 else ("after", "before")):
                data = before_data if arm == "before" else packed
                runs[arm].append(train_once(arm, data, recipe, stage, teacher, tokenizer, args.steps, tmp))
                print(f"round {r + 1} {arm}: {runs[arm][-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)

    load = os.getloadavg()
    print(f"GD throughput, {stage.name!r} of {Path(args.config).name}: teacher {Path(recipe.teacher.pretrained).name}, "
          f"batch {stage.batch_size} x {block} tokens, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load average {load[0]:.1f}/{load[1]:.1f}")
    print(f"one-time pack of the corpus ({len(packed)} blocks, {recipe.general.num_proc or os.cpu_count()} processes): "
          f"{pack_seconds:.1f} s, {len(packed) * block / pack_seconds:,.0f} tokens/s\n")
    print("| path | GD training tokens/s (median) | teacher share of step time | data path alone, tokens/s |")
    print("|---|---|---|---|")
    for arm in ("before", "after"):
        tps = statistics.median(x["tokens_per_s"] for x in runs[arm])
        share = statistics.median(x["teacher_share"] for x in runs[arm])
        print(f"| {arm} | {tps:,.0f} | {share:.0%} | {feeds[arm]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

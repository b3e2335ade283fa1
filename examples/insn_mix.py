#!/usr/bin/env python3
"""Instruction-mix histogram of a recorded run: how often each mnemonic executed.

Usage: python3 examples/insn_mix.py TRACE [--top N]

Per span of positions (in worker processes): count executions per block id, disassemble
each block once from its recorded bytes, and weight its mnemonics by the
executions.  In trace order: add the span histograms up.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from cannoli_db import Analysis, Trace


class InstructionMix(Analysis):
    tables = {"exec": ["block_id"]}

    def __init__(self):
        self.mix: Counter[str] = Counter()

    def per_span(self, span) -> Counter:
        ids, runs = np.unique(span.exec["block_id"], return_counts=True)
        texts = span.block_insns(ids)
        mix: Counter[str] = Counter()
        for block_id, n in zip(ids.tolist(), runs.tolist()):
            for text in texts[block_id]:
                mix[text.split(" ", 1)[0]] += n
        return mix

    def ordered(self, result: Counter) -> None:
        self.mix.update(result)

    def finish(self) -> Counter:
        return self.mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    with Trace.open(args.trace) as trace:
        mix = trace.analyze(InstructionMix())
    total = sum(mix.values())
    for mnemonic, n in mix.most_common(args.top):
        print(f"{mnemonic:<12} {n:>14,} {n / total:7.2%}")
    print(f"{'total':<12} {total:>14,}")


if __name__ == "__main__":
    main()

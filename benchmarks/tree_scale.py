"""How fast is the generation tree at the paper's scale? (docs/method.md#unbiased-counting, tree.py)

The paper reports ~45K-200K targeted rollouts per question, responses up to thousands of tokens.
This builds the trees of one question's representative paths from synthetic rollouts shaped like
targeted ones (forced prefix = path[:t] + [k], then an independent continuation), added in
batches as the pipeline does, and prints the time spent in the tree (generation excluded).

    python benchmarks/tree_scale.py                       # 200k rollouts x 2k tokens, 1 path
    python benchmarks/tree_scale.py --paths 4 --rollouts 50000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from distillscope.tree import QuestionTree, Ragged


def synthetic_batch(rng, paths, n, length, vocab):
    """n rollouts of `length` tokens: each follows a random path up to a random launch depth t,
    takes a random token there (m = t + 1) and continues with random tokens."""
    which = rng.integers(0, len(paths), size=n)
    launch = rng.integers(0, length, size=n)
    tokens = np.stack([paths[w] for w in which])  # (n, length)
    cols = np.arange(length)[None, :]
    tail = cols >= launch[:, None]
    tokens[tail] = rng.integers(0, vocab, size=int(tail.sum()))
    return Ragged.from_lengths(tokens.ravel(), np.full(n, length)), launch + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=200_000)
    ap.add_argument("--length", type=int, default=2_000)
    ap.add_argument("--paths", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2_000, help="rollouts per add() call")
    ap.add_argument("--vocab", type=int, default=150_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    paths = [rng.integers(0, args.vocab, size=args.length) for _ in range(args.paths)]
    qt = QuestionTree({i: p for i, p in enumerate(paths)})
    t_gen = t_tree = 0.0
    done = 0
    while done < args.rollouts:
        n = min(args.batch, args.rollouts - done)
        t0 = time.perf_counter()
        responses, forced = synthetic_batch(rng, paths, n, args.length, args.vocab)
        reward = rng.random(n) < 0.5
        t1 = time.perf_counter()
        qt.add(responses, forced, reward.astype(float))
        qt[0].visits(args.length // 2, int(paths[0][args.length // 2]))  # re-query as the
        t_tree += time.perf_counter() - t1  # pipeline does after each batch
        t_gen += t1 - t0
        done += n
    t0 = time.perf_counter()
    frame = qt.to_frame("q")
    t_frame = time.perf_counter() - t0
    tokens = args.rollouts * args.length
    print(f"rollouts {args.rollouts:,} x {args.length:,} tokens = {tokens / 1e6:,.0f}M tokens, "
          f"{args.paths} path(s), batches of {args.batch:,}")
    print(f"tree add+query   {t_tree:8.2f} s  ({tokens * args.paths / t_tree / 1e6:,.0f}M "
          f"token-comparisons/s)")
    print(f"to_frame         {t_frame:8.2f} s  ({len(frame):,} child rows)")
    print(f"(synthetic data  {t_gen:8.2f} s, not part of the tree)")
    print(f"children with >= 20 counted visits: {int((frame.visits >= 20).sum()):,}")

if __name__ == "__main__":
    main()

"""k-reciprocal re-ranking at SYSU-MM01 size: rerank.k_reciprocal_distance against the classic per-row loop
(the float64 reference of tests/test_rerank.py, written the way the field's re_ranking function is), in one run.

    python benchmarks/bench_rerank.py                                    # 3803 x 3803, D = 1536, CPU
    python benchmarks/bench_rerank.py --gpu 0                            # ours on the GPU (the loop: CPU)
    python benchmarks/bench_rerank.py --num_query 1000 --num_gallery 1000
    python benchmarks/bench_rerank.py --ref_queries 500                  # the loop's Jaccard part on 500 queries
    python benchmarks/bench_rerank.py --threads 1                        # one CPU thread (steadier when shared)

SYSU-MM01 all-search has 3803 infrared queries; its single-shot gallery is 96 x 4 = 384 images, the
multi-shot one 3840, so 3803 x 3803 is the multi-shot size. Features are random with an identity signal
(96 identity centres plus Gaussian noise, L2-normalised), so neighbourhoods have the structure re-ranking
feeds on. The loop's k-reciprocal part always runs in full (it needs every row); its Jaccard part, linear in
the number of queries, can be timed on the first --ref_queries queries and scaled up, and the line says so.
The max abs diff is over the rows the loop computed. The loop works in float64, ours in float32: where two
distances nearly tie, the two can rank them differently and a neighbour set changes (a few rows, ~1e-2 on
them); the script then also feeds the loop our float32 distance, which isolates the algorithm.
"""
import argparse
import os
import sys
import time
import timeit

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from rerank import k_reciprocal_distance, original_distance  # noqa: E402
from tests.test_rerank import reference_jaccard_rows, reference_original_distance, reference_vectors  # noqa: E402


def identity_features(num, dim, num_ids, noise, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen)
    pids = torch.randint(0, num_ids, (num,), generator=gen)
    return F.normalize(centres[pids] + noise * torch.randn(num, dim, generator=gen), dim=1)


def time_ours(query, gallery, params, device, repeats):
    """(distance on the CPU, best time of `repeats` runs after a warm-up)."""
    query, gallery = query.to(device), gallery.to(device)

    def run():
        out = k_reciprocal_distance(query, gallery, **params)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    result = run().cpu()
    return result, min(timeit.repeat(run, number=1, repeat=repeats))


def time_reference(query, gallery, params, ref_queries, original=None):
    """(distance rows 0..ref_queries-1, seconds for all queries: the Jaccard part scaled if a subset).
    original: an (N, N) original distance to use instead of the loop's own float64 one."""
    query, gallery = query.numpy(), gallery.numpy()
    start = time.perf_counter()
    if original is None:
        original = reference_original_distance(query, gallery)
    vectors = reference_vectors(original, params["k1"], params["k2"])
    t_vectors = time.perf_counter() - start
    start = time.perf_counter()
    jaccard = reference_jaccard_rows(vectors, range(ref_queries), len(query))
    t_jaccard = time.perf_counter() - start
    lam = params["lambda_value"]
    dist = jaccard * (1 - lam) + original[:ref_queries, len(query):] * lam
    return dist, t_vectors + t_jaccard * len(query) / ref_queries


def max_abs_diff(ours, reference):
    return float(np.abs(ours[:len(reference)].numpy().astype(np.float64) - reference).max())


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    if args.gpu != "cpu":
        if torch.cuda.is_available():
            device = torch.device(f"cuda:{args.gpu}")
        else:
            print("no CUDA device: ours runs on the CPU")
    feats = identity_features(args.num_query + args.num_gallery, args.dim, args.num_ids, args.noise, args.seed)
    query, gallery = feats[:args.num_query], feats[args.num_query:]
    params = dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, numpy {np.__version__}; ours on {device_name}; "
          f"{args.num_query} queries x {args.num_gallery} gallery, D = {args.dim}, {params}")
    ours, t_ours = time_ours(query, gallery, params, device, args.repeats)
    ref_queries = min(args.ref_queries or args.num_query, args.num_query)
    reference, t_ref = time_reference(query, gallery, params, ref_queries)
    diff = max_abs_diff(ours, reference)
    scaled = "" if ref_queries == args.num_query else (f" (k-reciprocal part in full, Jaccard part timed on "
                                                       f"{ref_queries} queries, scaled x{args.num_query / ref_queries:.1f})")
    print(f"ours {t_ours:7.3f}s (best of {args.repeats}) | loop {t_ref:8.2f}s{scaled} | "
          f"loop/ours {t_ref / t_ours:6.1f}x | max abs diff {diff:.1e}")
    if diff > 1e-5:
        # a near-tie ranked differently in float32 and float64 changes a neighbour set; the loop fed our float32
        # distance shows whether that is all
        ours_original = original_distance(feats.float()).double().numpy()
        shared = max_abs_diff(ours, time_reference(query, gallery, params, ref_queries, ours_original)[0])
        print(f"  the loop on our float32 original distance (near-ties then ranked alike): max abs diff {shared:.1e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="cpu", help="CUDA index for ours, or cpu")
    parser.add_argument("--num_query", type=int, default=3803)
    parser.add_argument("--num_gallery", type=int, default=3803)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--num_ids", type=int, default=96)
    parser.add_argument("--noise", type=float, default=2.7, help="feature noise around the identity centres")
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda_value", type=float, default=0.3)
    parser.add_argument("--ref_queries", type=int, default=None,
                        help="time the loop's Jaccard part on this many queries and scale (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats for ours (best is kept)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is steadier on a shared machine, where "
                             "threads waiting on a busy core slow every parallel step")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())

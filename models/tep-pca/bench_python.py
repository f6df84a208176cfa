#!/usr/bin/env python3
"""Python onnxruntime baseline on model.onnx: batch-1 latency and batch-256 throughput.

Prints one JSON object. Same measurement shape as the Rust bench (`cargo bench -p onnx-scoring`):
one thread (intra_op_num_threads = 1), warm-up, then timed runs that include building the
input array's float32 view and reading the outputs.

    .venv/bin/python models/tep-pca/bench_python.py [--runs 5000]
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(sess, x, runs):
    for _ in range(max(100, runs // 50)):
        sess.run(None, {"x": x})
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        out = sess.run(None, {"x": x})
        _ = out[0][0]
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return {
        "median_us": statistics.median(samples) / 1e3,
        "p99_us": samples[int(0.99 * (len(samples) - 1))] / 1e3,
        "mean_us": sum(samples) / len(samples) / 1e3,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--model", default=os.path.join(HERE, "model.onnx"))
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    golden = json.load(open(os.path.join(HERE, "golden.json")))
    row = np.asarray(golden["x"][:1], dtype=np.float32)
    b1 = measure(sess, row, args.runs)
    x256 = np.asarray([golden["x"][i % len(golden["x"])] for i in range(256)], dtype=np.float32)
    b256 = measure(sess, x256, max(1, args.runs // 5))
    b256["rows_per_s"] = 256 / (b256["median_us"] / 1e6)
    print(json.dumps({
        "runtime": "onnxruntime-python",
        "onnxruntime": ort.__version__,
        "model": os.path.relpath(args.model, os.getcwd()),
        "threads": 1,
        "batch1": b1,
        "batch256": b256,
    }))


if __name__ == "__main__":
    main()

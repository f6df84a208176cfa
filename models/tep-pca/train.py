#!/usr/bin/env python3
"""Train the TEP PCA monitoring model and export it to ONNX.

Reproducible: the same inputs give byte-identical model.onnx, metadata.json, golden.json and
reference_detection.json (fixed RNG seed for parallel analysis, no timestamps, fixed ONNX
producer fields). Run from anywhere:

    .venv/bin/python models/tep-pca/train.py            # writes the files and MODEL.md figures
    .venv/bin/python models/tep-pca/train.py --check    # verifies the files on disk are what it would write

Steps
1. X = d00.dat transposed (500 x 52 normal samples); autoscale with the mean and the sample
   standard deviation (ddof = 1).
2. PCA by eigen-decomposition of the correlation matrix Z'Z/(n-1); loadings' sign fixed so the
   largest-magnitude entry of each loading vector is positive.
3. Number of components a: Horn's parallel analysis (eigenvalues above the 95th percentile of
   eigenvalues of 1000 random N(0,1) data sets of the same size, seed 20260101).
4. Limits at alpha = 0.01: T2 from the F distribution, Q (SPE) by Jackson-Mudholkar.
5. ONNX graph x -> (x - mean)/sd = z -> t = zP -> t2 = sum(t^2/lambda), r = z - tP', contrib = r^2,
   q = sum(contrib).
6. Golden rows (d01_te and d00_te) with the expected outputs, and a per-fault detection table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "data", "tep"))

VERSION = "1.0.0"
ALPHA = 0.01
PA_REPS = 1000
PA_PERCENTILE = 95.0
PA_SEED = 20260101
GOLDEN_TOLERANCE = 1e-4  # t2 and q, relative: |got - want| <= tol * max(1, |want|)
CONTRIB_TOLERANCE = 1e-3  # contrib, same form (float32 cancellation in z - tP' is larger per variable)
GOLDEN_ROWS = [("d01_te.dat", 0), ("d01_te.dat", 159), ("d01_te.dat", 160), ("d01_te.dat", 400),
               ("d01_te.dat", 959), ("d00_te.dat", 0), ("d06_te.dat", 500)]
FAULT_ONSET = 160  # 0-based row of the first faulty sample in dNN_te (sample 161)

VARIABLES = [
    "XMEAS(1) A feed (stream 1)",
    "XMEAS(2) D feed (stream 2)",
    "XMEAS(3) E feed (stream 3)",
    "XMEAS(4) A and C feed (stream 4)",
    "XMEAS(5) Recycle flow (stream 8)",
    "XMEAS(6) Reactor feed rate (stream 6)",
    "XMEAS(7) Reactor pressure",
    "XMEAS(8) Reactor level",
    "XMEAS(9) Reactor temperature",
    "XMEAS(10) Purge rate (stream 9)",
    "XMEAS(11) Product separator temperature",
    "XMEAS(12) Product separator level",
    "XMEAS(13) Product separator pressure",
    "XMEAS(14) Product separator underflow (stream 10)",
    "XMEAS(15) Stripper level",
    "XMEAS(16) Stripper pressure",
    "XMEAS(17) Stripper underflow (stream 11)",
    "XMEAS(18) Stripper temperature",
    "XMEAS(19) Stripper steam flow",
    "XMEAS(20) Compressor work",
    "XMEAS(21) Reactor cooling water outlet temperature",
    "XMEAS(22) Separator cooling water outlet temperature",
] + [f"XMEAS({23 + i}) Reactor feed analysis {c}" for i, c in enumerate("ABCDEF")] \
  + [f"XMEAS({29 + i}) Purge gas analysis {c}" for i, c in enumerate("ABCDEFGH")] \
  + [f"XMEAS({37 + i}) Product analysis {c}" for i, c in enumerate("DEFGH")] + [
    "XMV(1) D feed flow (stream 2)",
    "XMV(2) E feed flow (stream 3)",
    "XMV(3) A feed flow (stream 1)",
    "XMV(4) A and C feed flow (stream 4)",
    "XMV(5) Compressor recycle valve",
    "XMV(6) Purge valve (stream 9)",
    "XMV(7) Separator pot liquid flow (stream 10)",
    "XMV(8) Stripper liquid product flow (stream 11)",
    "XMV(9) Stripper steam valve",
    "XMV(10) Reactor cooling water flow",
    "XMV(11) Condenser cooling water flow",
]
assert len(VARIABLES) == 52


def load(name: str) -> np.ndarray:
    x = np.loadtxt(os.path.join(DATA, name))
    if name == "d00.dat":
        x = x.T  # stored transposed: 52 x 500
    assert x.shape[1] == 52, (name, x.shape)
    return x


def fit(x: np.ndarray):
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    z = (x - mean) / sd
    n = z.shape[0]
    cov = z.T @ z / (n - 1)
    lam, vec = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    for j in range(vec.shape[1]):
        if vec[np.argmax(np.abs(vec[:, j])), j] < 0:
            vec[:, j] = -vec[:, j]
    return mean, sd, lam, vec


def parallel_analysis(n: int, m: int) -> np.ndarray:
    rng = np.random.default_rng(PA_SEED)
    eig = np.empty((PA_REPS, m))
    for r in range(PA_REPS):
        g = rng.standard_normal((n, m))
        g = (g - g.mean(axis=0)) / g.std(axis=0, ddof=1)
        eig[r] = np.sort(np.linalg.eigvalsh(g.T @ g / (n - 1)))[::-1]
    return np.percentile(eig, PA_PERCENTILE, axis=0)


def t2_limit(a: int, n: int, alpha: float) -> float:
    return float(a * (n * n - 1) / (n * (n - a)) * stats.f.ppf(1 - alpha, a, n - a))


def q_limit(lam: np.ndarray, a: int, alpha: float) -> float:
    rest = lam[a:]
    t1, t2, t3 = (float(np.sum(rest ** k)) for k in (1, 2, 3))
    h0 = 1 - 2 * t1 * t3 / (3 * t2 * t2)
    c = float(stats.norm.ppf(1 - alpha))
    return float(t1 * (c * np.sqrt(2 * t2 * h0 * h0) / t1 + 1 + t2 * h0 * (h0 - 1) / (t1 * t1)) ** (1 / h0))


def reference_scores(x, mean, sd, p, lam_a):
    """float64 reference of what the graph computes."""
    z = (x - mean) / sd
    t = z @ p
    t2 = np.sum(t * t / lam_a, axis=1)
    r = z - t @ p.T
    contrib = r * r
    return t2, contrib.sum(axis=1), contrib


def build_onnx(mean, sd, p, lam_a) -> bytes:
    m, a = p.shape
    f32 = lambda v: np.asarray(v, dtype=np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(mean), "mean"),
        numpy_helper.from_array(f32(sd), "sd"),
        numpy_helper.from_array(f32(p), "P"),
        numpy_helper.from_array(f32(p.T), "PT"),
        numpy_helper.from_array(f32(1.0 / lam_a), "inv_lambda"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xc"], name="center"),
        helper.make_node("Div", ["xc", "sd"], ["z"], name="scale"),
        helper.make_node("MatMul", ["z", "P"], ["t"], name="scores"),
        helper.make_node("Mul", ["t", "t"], ["t_sq"], name="t_squared"),
        helper.make_node("Mul", ["t_sq", "inv_lambda"], ["t_sq_w"], name="t_weighted"),
        helper.make_node("ReduceSum", ["t_sq_w", "axis1"], ["t2"], keepdims=0, name="t2_sum"),
        helper.make_node("MatMul", ["t", "PT"], ["z_hat"], name="reconstruct"),
        helper.make_node("Sub", ["z", "z_hat"], ["resid"], name="residual"),
        helper.make_node("Mul", ["resid", "resid"], ["contrib"], name="contrib_sq"),
        helper.make_node("ReduceSum", ["contrib", "axis1"], ["q"], keepdims=0, name="q_sum"),
    ]
    graph = helper.make_graph(
        nodes,
        "tep_pca",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", m])],
        [
            helper.make_tensor_value_info("t2", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("contrib", TensorProto.FLOAT, ["N", m]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="tep-pca-train",
        producer_version=VERSION,
        doc_string=f"PCA monitor for TEP, {a} components, alpha {ALPHA}",
    )
    model.ir_version = 8
    model.model_version = 1
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def run_onnx(blob: bytes, x: np.ndarray):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    return s.run(["t2", "q", "contrib"], {"x": x.astype(np.float32)})


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def r6(v) -> float:
    return float(f"{float(v):.7g}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="fail if the files on disk differ")
    args = ap.parse_args()

    x = load("d00.dat")
    n, m = x.shape
    mean, sd, lam, vec = fit(x)
    pa = parallel_analysis(n, m)
    a = int(np.argmax(lam <= pa))  # first eigenvalue that is not above chance
    assert np.all(lam[:a] > pa[:a]) and a > 0
    p = vec[:, :a]
    lam_a = lam[:a]
    t2_lim = t2_limit(a, n, ALPHA)
    q_lim = q_limit(lam, a, ALPHA)
    cumvar = np.cumsum(lam) / np.sum(lam)

    blob = build_onnx(mean, sd, p, lam_a)
    sha = hashlib.sha256(blob).hexdigest()

    # Golden rows: float32 inputs, float64 reference outputs of the float32 input.
    files = {}
    rows = []
    for f, i in GOLDEN_ROWS:
        files.setdefault(f, load(f))
        rows.append(files[f][i])
    gx = np.asarray(rows, dtype=np.float32)
    gt2, gq, gc = reference_scores(gx.astype(np.float64), mean, sd, p, lam_a)
    ot2, oq, oc = run_onnx(blob, gx)
    for nm, got, want in (("t2", ot2, gt2), ("q", oq, gq), ("contrib", oc, gc)):
        err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
        tol = CONTRIB_TOLERANCE if nm == "contrib" else GOLDEN_TOLERANCE
        assert err.max() <= tol, f"onnxruntime {nm} differs from numpy by {err.max()}"

    golden = {
        "comment": "Rows of the TEP test sets (file, 0-based row); expected outputs computed by numpy in float64 from the float32 inputs.",
        "tolerance": GOLDEN_TOLERANCE,
        "contrib_tolerance": CONTRIB_TOLERANCE,
        "tolerance_kind": "relative: |got - want| <= tolerance * max(1, |want|)",
        "rows": [{"file": f, "row": i} for f, i in GOLDEN_ROWS],
        "x": [[float(v) for v in r] for r in gx],
        "t2": [r6(v) for v in gt2],
        "q": [r6(v) for v in gq],
        "contrib": [[r6(v) for v in r] for r in gc],
    }
    # r6 rounding: 7 significant digits keeps the relative error far under the tolerance.

    # Detection table (scored by onnxruntime, i.e. exactly what ships).
    def alarms(data):
        t2, q, _ = run_onnx(blob, data.astype(np.float32))
        return (t2 > t2_lim), (q > q_lim)

    table = {}
    d00 = load("d00_te.dat")
    at2, aq = alarms(d00)
    table["d00_te"] = {
        "false_alarm_t2": r6(at2.mean()), "false_alarm_q": r6(aq.mean()),
        "false_alarm_any": r6((at2 | aq).mean()), "samples": int(len(d00)),
    }
    for k in range(1, 22):
        d = load(f"d{k:02d}_te.dat")
        at2, aq = alarms(d)
        pre, post = slice(0, FAULT_ONSET), slice(FAULT_ONSET, None)
        table[f"d{k:02d}_te"] = {
            "false_alarm_t2": r6(at2[pre].mean()), "false_alarm_q": r6(aq[pre].mean()),
            "false_alarm_any": r6((at2 | aq)[pre].mean()),
            "missed_t2": r6(1 - at2[post].mean()), "missed_q": r6(1 - aq[post].mean()),
            "missed_any": r6(1 - (at2 | aq)[post].mean()),
        }
    detection = {
        "comment": "False-alarm rate over samples 1-160 (all 960 for d00_te); missed-detection rate over samples 161-960. 'any' = T2 or Q alarm.",
        "model_version": VERSION,
        "model_sha256": sha,
        "t2_limit": r6(t2_lim),
        "q_limit": r6(q_lim),
        "runs": table,
    }

    metadata = {
        "name": "tep-pca",
        "version": VERSION,
        "sha256": sha,
        "opset": 17,
        "ir_version": 8,
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, m]}],
        "outputs": [
            {"name": "t2", "dtype": "float32", "shape": [-1]},
            {"name": "q", "dtype": "float32", "shape": [-1]},
            {"name": "contrib", "dtype": "float32", "shape": [-1, m]},
        ],
        "variables": VARIABLES,
        "alpha": ALPHA,
        "components": a,
        "training_samples": n,
        "t2_limit": r6(t2_lim),
        "q_limit": r6(q_lim),
        "golden": "golden.json",
        "mean": [float(v) for v in mean],
        "sd": [float(v) for v in sd],
        "eigenvalues": [float(v) for v in lam],
        "loadings": [[float(v) for v in row] for row in p],
    }

    outputs = {
        "model.onnx": blob,
        "metadata.json": dumps(metadata).encode(),
        "golden.json": dumps(golden).encode(),
        "reference_detection.json": dumps(detection).encode(),
    }
    figures = render_figures(a, n, lam, pa, cumvar, t2_lim, q_lim, sha, golden, detection)
    md_path = os.path.join(HERE, "MODEL.md")
    md = open(md_path, encoding="utf-8").read() if os.path.exists(md_path) else ""
    new_md = splice(md, figures)
    outputs["MODEL.md"] = new_md.encode()

    bad = []
    for name, data in outputs.items():
        path = os.path.join(HERE, name)
        if args.check:
            if not os.path.exists(path) or open(path, "rb").read() != data:
                bad.append(name)
        else:
            with open(path, "wb") as fh:
                fh.write(data)
    if bad:
        print(json.dumps({"check": "failed", "differs": bad}))
        return 1
    print(json.dumps({"version": VERSION, "components": a, "sha256": sha, "t2_limit": t2_lim,
                      "q_limit": q_lim, "check": "ok" if args.check else "written"}))
    return 0


BEGIN = "<!-- BEGIN GENERATED (train.py) -->"
END = "<!-- END GENERATED -->"


def splice(md: str, figures: str) -> str:
    block = f"{BEGIN}\n{figures}{END}"
    if BEGIN in md and END in md:
        return re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, md, flags=re.S)
    return md + ("\n" if md and not md.endswith("\n") else "") + block + "\n"


def render_figures(a, n, lam, pa, cumvar, t2_lim, q_lim, sha, golden, detection) -> str:
    out = []
    w = out.append
    w(f"- model.onnx sha256: `{sha}`\n")
    w(f"- version: `{VERSION}`; components retained: **{a}** of 52; training samples: {n}\n")
    w(f"- T² limit (99 %): **{t2_lim:.4f}**; Q limit (99 %): **{q_lim:.4f}**\n\n")
    w("### Parallel analysis (first 20 eigenvalues)\n\n")
    w(f"Random eigenvalue = {PA_PERCENTILE:.0f}th percentile over {PA_REPS} N(0,1) data sets of {n}×52 (seed {PA_SEED}).\n\n")
    w("| k | eigenvalue | random (95th pct) | kept | cumulative variance |\n|---|---|---|---|---|\n")
    for k in range(20):
        w(f"| {k + 1} | {lam[k]:.4f} | {pa[k]:.4f} | {'yes' if k < a else 'no'} | {100 * cumvar[k]:.1f} % |\n")
    w("\n### Golden input and output\n\n")
    w("Inputs are the rows below (full 52 values in `golden.json`); outputs from numpy (float64).\n\n")
    w("| file | row (0-based) | t2 | q |\n|---|---|---|---|\n")
    for r, t2, q in zip(golden["rows"], golden["t2"], golden["q"]):
        w(f"| {r['file']} | {r['row']} | {t2:.6g} | {q:.6g} |\n")
    w("\n### Detection on the test sets (alarms from onnxruntime on model.onnx)\n\n")
    w("False alarms over samples 1–160 (all 960 for d00_te); missed detection over 161–960.\n\n")
    w("| run | false alarm T² | false alarm Q | false alarm any | missed T² | missed Q | missed any |\n|---|---|---|---|---|---|---|\n")
    for run, v in detection["runs"].items():
        pct = lambda k: f"{100 * v[k]:.1f} %" if k in v else "–"  # noqa: E731
        w(f"| {run} | {pct('false_alarm_t2')} | {pct('false_alarm_q')} | {pct('false_alarm_any')} | "
          f"{pct('missed_t2')} | {pct('missed_q')} | {pct('missed_any')} |\n")
    return "".join(out)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Runs the elbo-vs-PyTorch parity comparison of `vae-mlp` and prints the tables.

For each seed: trains elbo (`elbo train vae ... --iw 1000`), evaluates its weights again
with vae_mlp.py's evaluation (on elbo's exact binary test set and on torch-binarised
ones), and trains the PyTorch reference (vae_mlp.py train) with each `--torch-init`.
Trainings run one at a time. Results already in --out are reused (delete them, or pass
--fresh, to redo). With --timing-repeats N, also times N short alternating trainings of
each side without the IWAE evaluation, noting the load average.

    ~/.cache/elbo/venv/bin/python benches/reference/parity.py [--seeds 0,1,2]
        [--out /tmp/parity] [--elbo "cargo run -q -p elbo-cli --"] [--threads 2]
"""

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def load1():
    return os.getloadavg()[0]


def run(cmd, stdout_path, stderr_path, cwd=REPO):
    print("+ " + " ".join(shlex.quote(str(c)) for c in cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        code = subprocess.run([str(c) for c in cmd], stdout=out, stderr=err, cwd=cwd).returncode
    if code != 0:
        sys.exit(f"failed ({code}): see {stderr_path}")
    return time.perf_counter() - start


def parse_elbo_output(out_text, err_text):
    """The final evaluation elbo prints, and the loop's it/s at the last step."""
    terms = {}
    for name, key in [("reconstruction", "reconstruction"), ("prior_matching", "kl")]:
        m = re.search(rf"^\s+{name}\s+(-?[\d.]+) nats", out_text, re.M)
        terms[key] = float(m.group(1))
    terms["elbo"] = float(re.search(r"^\s+ELBO\s+(-?[\d.]+) nats", out_text, re.M).group(1))
    m = re.search(r"^\s+IWAE-(\d+)\s+(-?[\d.]+) nats", out_text, re.M)
    if m:
        terms[f"iwae_{m.group(1)}"] = float(m.group(2))
    rates = re.findall(r"\| ([\d.]+) it/s", err_text)
    its = float(rates[-1]) if rates else math.nan
    curve = [float(v) for v in re.findall(r"test elbo (-?[\d.]+)", err_text)]
    return terms, its, curve


def elbo_train(args, seed, run_dir, iw):
    cmd = shlex.split(args.elbo) + [
        "train", "vae", "--epochs", args.epochs, "--seed", seed, "--run", run_dir,
        "--iw", iw, "--threads", args.threads,
    ]  # fmt: skip
    return cmd


def torch_train(args, seed, init, iw, test_sets):
    return [
        args.python, HERE / "vae_mlp.py", "train", "--seed", seed, "--epochs", args.epochs,
        "--threads", args.threads, "--iw", iw, "--init", init, "--test-sets", test_sets,
    ]  # fmt: skip


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(v, width=9, digits=2):
    return f"{v:{width}.{digits}f}" if v is not None and not math.isnan(v) else " " * (width - 1) + "-"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", default="10")
    p.add_argument("--threads", default="2")
    p.add_argument("--iw", default="1000")
    p.add_argument("--out", type=Path, default=Path("/tmp/parity"))
    p.add_argument("--elbo", default="cargo run -q -p elbo-cli --", help="how to run elbo")
    p.add_argument("--python", default=sys.executable, help="the venv's python (torch 2.13.0)")
    p.add_argument(
        "--torch-init",
        default="torch,tch",
        help="PyTorch reference initialisations to train: torch (nn.Linear's default), "
        "tch (tch's nn::linear default, as elbo)",
    )
    p.add_argument("--test-sets", default="elbo,torch:0,torch:1,torch:2")
    p.add_argument("--timing-repeats", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="redo results already in --out")
    args = p.parse_args()
    seeds = [s for s in args.seeds.split(",") if s]
    inits = [i for i in args.torch_init.split(",") if i]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    iw_key = f"iwae_{args.iw}"
    results = {"elbo": {}, "elbo_pyeval": {}, "torch": {i: {} for i in inits}, "load": {}}

    for seed in seeds:
        run_dir, stdout, stderr = out / f"elbo-{seed}", out / f"elbo-{seed}.out", out / f"elbo-{seed}.err"
        if args.fresh or not stdout.exists() or "IWAE" not in stdout.read_text():
            shutil.rmtree(run_dir, ignore_errors=True)
            before = uptime()
            run(elbo_train(args, seed, run_dir, args.iw), stdout, stderr)
            (out / f"elbo-{seed}.uptime").write_text(before + "\n" + uptime() + "\n")
        terms, its, curve = parse_elbo_output(stdout.read_text(), stderr.read_text())
        results["elbo"][seed] = {"eval": terms, "loop_steps_per_s": its, "epoch_test_elbo": curve}
        pyeval = out / f"elbo-{seed}.pyeval.json"
        if args.fresh or not pyeval.exists():
            cmd = [args.python, HERE / "vae_mlp.py", "eval-elbo", run_dir, "--iw", args.iw,
                   "--threads", args.threads, "--test-sets", args.test_sets]  # fmt: skip
            run(cmd, pyeval, out / f"elbo-{seed}.pyeval.err")
        results["elbo_pyeval"][seed] = json.loads(pyeval.read_text())["eval"]
        for init in inits:
            path = out / f"torch-{init}-{seed}.json"
            if args.fresh or not path.exists():
                before = uptime()
                run(torch_train(args, seed, init, args.iw, args.test_sets), path,
                    out / f"torch-{init}-{seed}.err")  # fmt: skip
                (out / f"torch-{init}-{seed}.uptime").write_text(before + "\n" + uptime() + "\n")
            results["torch"][init][seed] = json.loads(path.read_text())

    # --- Table 1: each side's own evaluation (elbo's numbers as elbo prints them; the
    # PyTorch model on elbo's exact test binarisation, so the test sets are identical).
    print(f"\nvae-mlp, {args.epochs} epochs, batch 128, Adam 1e-3, threads {args.threads}; "
          f"test ELBO and IWAE-{args.iw} NLL in nats on elbo's binary test set (1,000 images)")  # fmt: skip
    header = f"{'seed':>4} | {'elbo ELBO':>9} {'elbo NLL':>9}"
    for init in inits:
        header += f" | {'pt-' + init + ' ELBO':>13} {'pt-' + init + ' NLL':>12}"
    print(header)
    print("-" * len(header))
    cols = {"e_elbo": [], "e_nll": []}
    for init in inits:
        cols[f"{init}_elbo"], cols[f"{init}_nll"] = [], []
    for seed in seeds:
        e = results["elbo"][seed]["eval"]
        line = f"{seed:>4} | {fmt(e['elbo'])} {fmt(-e[iw_key])}"
        cols["e_elbo"].append(e["elbo"])
        cols["e_nll"].append(-e[iw_key])
        for init in inits:
            t = results["torch"][init][seed]["eval"]["elbo"]
            line += f" | {fmt(t['elbo'], 13)} {fmt(-t[iw_key], 12)}"
            cols[f"{init}_elbo"].append(t["elbo"])
            cols[f"{init}_nll"].append(-t[iw_key])
        print(line)
    summary = {k: mean_sd(v) for k, v in cols.items()}
    line = f"{'mean':>4} | {fmt(summary['e_elbo'][0])} {fmt(summary['e_nll'][0])}"
    for init in inits:
        line += f" | {fmt(summary[init + '_elbo'][0], 13)} {fmt(summary[init + '_nll'][0], 12)}"
    print(line)
    line = f"{'sd':>4} | {fmt(summary['e_elbo'][1])} {fmt(summary['e_nll'][1])}"
    for init in inits:
        line += f" | {fmt(summary[init + '_elbo'][1], 13)} {fmt(summary[init + '_nll'][1], 12)}"
    print(line)
    n = len(seeds)
    for init in inits:
        d_elbo = summary["e_elbo"][0] - summary[init + "_elbo"][0]
        d_nll = summary["e_nll"][0] - summary[init + "_nll"][0]
        se = math.sqrt((summary["e_nll"][1] ** 2 + summary[init + "_nll"][1] ** 2) / n)
        print(f"elbo - pytorch({init}): ELBO {d_elbo:+.2f} nats, NLL {d_nll:+.2f} nats "
              f"(s.e. of the NLL difference from seed spread: {se:.2f})")  # fmt: skip

    # --- Table 2: the same weights under both evaluations, and across binarisations.
    print(f"\nIWAE-{args.iw} NLL of each trained model on each test binarisation "
          "(all evaluated by vae_mlp.py; 'elbo-own' is elbo's own evaluation)")
    sets = [s for s in args.test_sets.split(",") if s]
    print(f"{'model':>16} | {'elbo-own':>8} | " + " | ".join(f"{s:>8}" for s in sets) + " | spread")
    spreads = []
    rows = [(f"elbo s{s}", results["elbo"][s]["eval"][iw_key], results["elbo_pyeval"][s]) for s in seeds]
    for init in inits:
        rows += [(f"pt-{init} s{s}", None, results["torch"][init][s]["eval"]) for s in seeds]
    for name, own, ev in rows:
        vals = [-ev[s][iw_key] for s in sets if s in ev]
        torch_vals = [-ev[s][iw_key] for s in sets if s.startswith("torch:") and s in ev]
        spread = statistics.stdev(torch_vals) if len(torch_vals) > 1 else math.nan
        spreads.append(spread)
        own_text = fmt(-own, 8) if own is not None else " " * 7 + "-"
        print(f"{name:>16} | {own_text} | " + " | ".join(fmt(v, 8) for v in vals) + f" | {fmt(spread, 5)}")
    print(f"binarisation effect: sd of a model's NLL across torch test binarisations, "
          f"mean over models = {statistics.mean([s for s in spreads if not math.isnan(s)]):.3f} nats")
    gaps = [results["elbo"][s]["eval"][iw_key] - results["elbo_pyeval"][s]["elbo"][iw_key] for s in seeds]
    kl_gaps = [results["elbo"][s]["eval"]["kl"] - results["elbo_pyeval"][s]["elbo"]["kl"] for s in seeds]
    print("same weights, same test set, elbo's vs vae_mlp.py's evaluation: IWAE differs by "
          + ", ".join(f"{g:+.3f}" for g in gaps) + " nats; KL (deterministic) by "
          + ", ".join(f"{g:+.4f}" for g in kl_gaps))  # fmt: skip

    # --- Speed (from the accuracy runs; see --timing-repeats for a cleaner look).
    print("\nsteps/s during the accuracy runs (training loop incl. per-epoch test ELBO):")
    for seed in seeds:
        line = f"  seed {seed}: elbo {results['elbo'][seed]['loop_steps_per_s']:.1f}"
        for init in inits:
            t = results["torch"][init][seed]
            line += f", pytorch-{init} {t['loop_steps_per_s']:.1f} (train only {t['train_steps_per_s']:.1f})"
        print(line)

    if args.timing_repeats > 0:
        tdir = out / "timing"
        shutil.rmtree(tdir, ignore_errors=True)
        tdir.mkdir(parents=True)
        timing = {"elbo": [], "pytorch": [], "load1": []}
        for r in range(args.timing_repeats):
            timing["load1"].append(load1())
            run(elbo_train(args, 0, tdir / f"elbo-{r}", 0), tdir / f"elbo-{r}.out", tdir / f"elbo-{r}.err")
            _, its, _ = parse_elbo_output("  reconstruction 0 nats\n  prior_matching 0 nats\n  ELBO 0 nats",
                                          (tdir / f"elbo-{r}.err").read_text())  # fmt: skip
            timing["elbo"].append(its)
            timing["load1"].append(load1())
            cmd = torch_train(args, 0, "torch", 0, "")
            run(cmd, tdir / f"torch-{r}.json", tdir / f"torch-{r}.err")
            timing["pytorch"].append(json.loads((tdir / f"torch-{r}.json").read_text()))
        timing["load1"].append(load1())
        pt_loop = [t["loop_steps_per_s"] for t in timing["pytorch"]]
        pt_train = [t["train_steps_per_s"] for t in timing["pytorch"]]
        print(f"\ntiming, {args.timing_repeats} alternating runs each (no IWAE), "
              f"1-min load averages seen: {', '.join(f'{v:.2f}' for v in timing['load1'])}")  # fmt: skip
        print(f"  elbo    loop steps/s: median {statistics.median(timing['elbo']):.1f} "
              f"(all: {', '.join(f'{v:.1f}' for v in timing['elbo'])})")
        print(f"  pytorch loop steps/s: median {statistics.median(pt_loop):.1f} "
              f"(all: {', '.join(f'{v:.1f}' for v in pt_loop)}); "
              f"train-only median {statistics.median(pt_train):.1f}")
        results["timing"] = {
            "elbo_loop_steps_per_s": timing["elbo"],
            "pytorch_loop_steps_per_s": pt_loop,
            "pytorch_train_steps_per_s": pt_train,
            "load1": timing["load1"],
        }

    (out / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nall results: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
